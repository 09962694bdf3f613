import math

import pytest
import torch
import torch.nn.functional as F

from dgtrs_geo.models import create_clip, save_checkpoint
from dgtrs_geo.models.checkpoints import read_checkpoint
from dgtrs_geo.models.kps import (
    freeze_positional_prefix,
    frozen_prefix_rows,
    stretch_positional_embedding,
    stretched_length,
)


def stretch_loop(pe: torch.Tensor, keep: int, ratio: int) -> torch.Tensor:
    """docs/protocols.md section 2 written as a plain loop."""
    length = pe.shape[0]
    rows = []
    for k in range(ratio * length - (ratio - 1) * keep):
        if k < keep:
            rows.append(pe[k])
            continue
        p = keep + (k - keep) / ratio
        lo = min(math.floor(p), length - 2)
        t = p - lo
        rows.append((1 - t) * pe[lo] + t * pe[lo + 1])
    return torch.stack(rows)


def test_default_length_is_248() -> None:
    assert stretched_length(77) == 248
    assert stretch_positional_embedding(torch.randn(77, 8)).shape == (248, 8)


@pytest.mark.parametrize(("keep", "ratio"), [(20, 4), (20, 8), (10, 2), (0, 3), (75, 4)])
def test_matches_loop_form(keep: int, ratio: int) -> None:
    pe = torch.randn(77, 16, dtype=torch.float64)
    expected = stretch_loop(pe, keep, ratio)
    assert torch.allclose(stretch_positional_embedding(pe, keep, ratio), expected, atol=1e-12)


def test_hand_computed_rows() -> None:
    # Row r of PE is filled with r, so interpolation and extrapolation are visible in the values.
    pe = torch.arange(77, dtype=torch.float64).unsqueeze(1).repeat(1, 3)
    pe[76] = 100.0  # make the last step (75 -> 76) differ from the others
    new = stretch_positional_embedding(pe)
    assert torch.equal(new[:20], pe[:20])
    assert torch.allclose(new[20], pe[20])
    assert torch.allclose(new[21], torch.full((3,), 20.25, dtype=torch.float64))
    # k = 243: p = 75.75, lo = 75, t = 0.75
    assert torch.allclose(new[243], torch.full((3,), 0.25 * 75 + 0.75 * 100, dtype=torch.float64))
    # k = 244: p = 76, lo clamped to 75, t = 1 -> PE[76]
    assert torch.allclose(new[244], pe[76])
    # k = 247: t = 1.75 extrapolates along PE[76] - PE[75] = 25
    assert torch.allclose(new[247], torch.full((3,), 100 + 0.75 * 25, dtype=torch.float64))


def test_interpolate_does_not_reproduce_kps() -> None:
    pe = torch.randn(77, 4)
    new = stretch_positional_embedding(pe)
    for align in (True, False):
        tail = F.interpolate(pe[20:].T[None], size=228, mode="linear", align_corners=align)[0].T
        assert not torch.allclose(torch.cat([pe[:20], tail]), new, atol=1e-4)


def test_dtype_preserved_and_bad_arguments() -> None:
    assert (
        stretch_positional_embedding(torch.randn(77, 4, dtype=torch.float16)).dtype == torch.float16
    )
    with pytest.raises(ValueError, match="2-D"):
        stretch_positional_embedding(torch.randn(77))
    with pytest.raises(ValueError, match="keep=76"):
        stretch_positional_embedding(torch.randn(77, 4), keep=76)
    with pytest.raises(ValueError, match="ratio"):
        stretch_positional_embedding(torch.randn(77, 4), ratio=0)


def test_frozen_rows_survive_adamw_with_weight_decay(tmp_path) -> None:
    torch.manual_seed(0)
    clip = create_clip("dgtrs-tiny")
    before = clip.positional_embedding.detach().clone()
    freeze_positional_prefix(clip, keep=20)
    assert frozen_prefix_rows(clip) == 20
    optimizer = torch.optim.AdamW(clip.parameters(), lr=0.1, weight_decay=0.5)
    tokens = torch.randint(1, 49000, (4, 248))
    for _ in range(3):
        optimizer.zero_grad()
        clip.encode_text(tokens).pow(2).sum().backward()
        optimizer.step()
    after = clip.positional_embedding.detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.allclose(after[20:], before[20:])

    # Through a save and a read, the effective table (frozen rows included) is what is kept.
    path = save_checkpoint(clip, tmp_path / "trained.pt", format="open_clip")
    state, _ = read_checkpoint(path)
    assert torch.equal(state["positional_embedding"], after)
    # A re-freeze replaces the prefix instead of stacking a second one.
    freeze_positional_prefix(clip, keep=10)
    assert frozen_prefix_rows(clip) == 10
