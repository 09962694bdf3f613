"""Image-text retrieval recalls (R@K and mR) with several captions per image.

The protocol is GeoRSCLIP's (docs/protocols.md sec. 5): image->text R@K is the share of images with
at least one of their captions among the K best-scored captions; text->image R@K is the share of
captions whose image is among the K best-scored images; mR is the mean of all these recalls.

Ties are broken **against** the positive: a positive is ranked after every negative that scores
the same. A degenerate model whose embeddings are all equal therefore scores R@K = K / N (no
better than the last place in every tie), never 100 %. For real, continuous embeddings ties do
not happen and the result equals any sort-based implementation's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Rows of the score matrix computed at once: bounds memory to chunk x N floats for large test sets.
_CHUNK = 1024


def _check_inputs(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, ks: Sequence[int]
) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D [N, D]; got image {tuple(image_emb.shape)}, "
            f"text {tuple(text_emb.shape)}"
        )
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image and text embeddings differ in width ({image_emb.shape[1]} vs "
            f"{text_emb.shape[1]}): were they made by the same model?"
        )
    if text_to_image.ndim != 1 or text_to_image.shape[0] != text_emb.shape[0]:
        raise ValueError(
            f"text_to_image must be 1-D with one image index per caption ({text_emb.shape[0]}); "
            f"got shape {tuple(text_to_image.shape)}"
        )
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer indices, got {text_to_image.dtype}")
    n_images = image_emb.shape[0]
    if n_images == 0 or text_emb.shape[0] == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if text_to_image.min() < 0 or text_to_image.max() >= n_images:
        raise ValueError(f"text_to_image holds indices outside [0, {n_images - 1}]")
    captioned = torch.bincount(text_to_image.cpu(), minlength=n_images)
    if (captioned == 0).any():
        missing = torch.nonzero(captioned == 0).flatten()[:5].tolist()
        raise ValueError(
            f"{int((captioned == 0).sum())} images have no caption (first: {missing}); "
            "image->text recall is undefined for them: drop them from image_emb"
        )
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")


def _image_to_text_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor) -> Tensor:
    """Rank (0 = first) of each image's best caption among all captions, ties against it."""
    ranks = []
    for start in range(0, image_emb.shape[0], _CHUNK):
        scores = image_emb[start : start + _CHUNK] @ text_emb.T  # [c, Nt]
        rows = torch.arange(start, start + scores.shape[0], device=scores.device)
        positive = text_to_image.unsqueeze(0) == rows.unsqueeze(1)  # [c, Nt]
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        # Only negatives compete: the other captions of the same image are not counted above it.
        ranks.append(((scores >= best) & ~positive).sum(dim=1))
    return torch.cat(ranks)


def _text_to_image_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor) -> Tensor:
    """Rank (0 = first) of each caption's image among all images, ties against it."""
    ranks = []
    for start in range(0, text_emb.shape[0], _CHUNK):
        scores = text_emb[start : start + _CHUNK] @ image_emb.T  # [c, Ni]
        target = text_to_image[start : start + scores.shape[0]].unsqueeze(1)
        positive_score = scores.gather(1, target)
        positive = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, target, True)
        ranks.append(((scores >= positive_score) & ~positive).sum(dim=1))
    return torch.cat(ranks)


def retrieval_recalls(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image recall at K, and their mean mR, in percent.

    Args:
        image_emb: image embeddings ``[Ni, D]``, already L2-normalised.
        text_emb: caption embeddings ``[Nt, D]``, already L2-normalised.
        text_to_image: for each caption, the index of its image in ``image_emb`` (``[Nt]``,
            integer). Several captions may share an image (5 per image on RSITMD and RSICD);
            every image needs at least one caption.
        ks: the cut-offs K.

    Returns:
        ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR"}`` for the default
        ``ks`` (one ``i2t_r{k}`` and ``t2i_r{k}`` per K), each x100; ``mR`` is the mean of all of
        them. Ties count against the positive (see the module docstring).

    Raises:
        ValueError: if shapes disagree, an index is out of range, an image has no caption or a
            K is not positive.

    """
    text_to_image = torch.as_tensor(text_to_image, device=image_emb.device)
    _check_inputs(image_emb, text_emb, text_to_image, ks)
    image_emb = image_emb.float()
    text_emb = text_emb.to(image_emb)
    text_to_image = text_to_image.long()
    with torch.no_grad():
        i2t = _image_to_text_ranks(image_emb, text_emb, text_to_image)
        t2i = _text_to_image_ranks(image_emb, text_emb, text_to_image)
    result: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            result[f"{name}_r{int(k)}"] = 100.0 * (ranks < int(k)).float().mean().item()
    result["mR"] = sum(result.values()) / len(result)
    return result
