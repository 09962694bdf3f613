import math

import pytest
import torch
import torch.nn.functional as F

from dgtrs_geo.losses import DualGranularityLoss, SymmetricInfoNCE, pca_reconstruct


def infonce_by_hand(image: torch.Tensor, text: torch.Tensor, scale: float, eps: float = 0.0):
    """Symmetric InfoNCE written out with explicit sums (no cross_entropy)."""
    n = image.shape[0]
    total = 0.0
    for logits in (scale * image @ text.T, scale * text @ image.T):
        for i in range(n):
            row = logits[i].tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            nll = [log_z - v for v in row]
            total += (1 - eps) * nll[i] + eps * sum(nll) / n
    return total / (2 * n)


def test_two_orthogonal_pairs_hand_value() -> None:
    eye = torch.eye(2)
    loss = SymmetricInfoNCE()(eye, eye, torch.tensor(1.0))
    # each row: logits [1, 0] with the positive first -> -log(e / (e + 1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_terms_match_hand_written_infonce(smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    long = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    short = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(7.5)
    out = DualGranularityLoss(label_smoothing=smoothing)(image, long, short, scale, 0.3, 1.2)
    expected_long = infonce_by_hand(image, long, 7.5, smoothing)
    expected_short = infonce_by_hand(image, short, 7.5, smoothing)
    assert out.loss_long.item() == pytest.approx(expected_long, rel=1e-5)
    assert out.loss_short.item() == pytest.approx(expected_short, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.3 * expected_long + 1.2 * expected_short, rel=1e-5)


def test_shared_logit_scale_gets_gradient_from_both_terms() -> None:
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    long = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    short = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    loss_fn = DualGranularityLoss()
    grads = []
    for w_long, w_short in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        log_scale = torch.tensor(math.log(10.0), requires_grad=True)
        loss_fn(image, long, short, log_scale.exp(), w_long, w_short).loss.backward()
        grads.append(log_scale.grad.item())
    assert grads[0] != 0 and grads[1] != 0
    assert grads[2] == pytest.approx(grads[0] + grads[1], rel=1e-5)


def test_pca_reconstruct_keeps_top_components() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 6, generator=g)
    assert torch.allclose(pca_reconstruct(x, 6), x, atol=1e-5)
    recon = pca_reconstruct(x, 2)
    centered = recon - x.mean(dim=0)
    assert torch.linalg.matrix_rank(centered, atol=1e-4).item() == 2
    # the best rank-2 approximation of the centred data: truncated SVD
    xc = x - x.mean(dim=0)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    assert torch.allclose(centered, best, atol=1e-4)


def test_pca_short_branch_changes_short_term_only_and_backpropagates() -> None:
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(8, 16, generator=g), dim=-1).requires_grad_()
    long = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    short = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    plain = DualGranularityLoss()(image, long, short, scale)
    pca = DualGranularityLoss(pca_short_components=2)(image, long, short, scale)
    assert pca.loss_long.item() == pytest.approx(plain.loss_long.item())
    assert pca.loss_short.item() != pytest.approx(plain.loss_short.item())
    pca.loss.backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
