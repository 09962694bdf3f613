"""Dense (patch-level) localization maps from CLIP ViTs, without training.

Window-level maps score each window once, so they are no sharper than a window. A CLIP ViT also
holds one token per patch; read the right way, those tokens land in the joint image-text space
and score each patch of a window from the same forward pass:

* ``"maskclip"`` (MaskCLIP's value path): the last block's attention is replaced by each token's
  own value (``out_proj(v)``); the residual and the MLP of that block are kept.
* ``"clearclip"`` (ClearCLIP's recipe): the last block's attention uses query-query similarity
  (``softmax(q q^T / sqrt(d)) v`` per head), and the block's residual and MLP are dropped.

Both then apply the tower's ``ln_post`` and ``proj`` to every patch token. Blocks before the last
run once; the window embedding (the class token through the unmodified last block) comes from the
same pass and equals ``encode_image``. A patch's score is the cosine similarity of its embedding
with the query; each pixel takes the mean score of the patches covering it, over every window and
scale; the map is smoothed by half a patch of the smallest window and min-max normalised.

Patch embeddings cost ``grid**2`` times the disk of window embeddings (:func:`patch_index_bytes`):
196 x for a ViT-B/16 at 224 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor, nn

from ..protocols import ClipModel
from .encode import preprocess_batch
from .windows import REFERENCE_SCALES, plan_windows

__all__ = [
    "DENSE_METHODS",
    "dense_probability_maps",
    "encode_dense",
    "encode_patches",
    "patch_grid",
    "patch_index_bytes",
    "patch_mean_map",
]

#: Training-free ways to read patch tokens of a CLIP ViT in the joint space.
DENSE_METHODS = ("maskclip", "clearclip")


def _check_vit(visual: Any) -> None:
    """Refuse towers whose tokens the dense readings do not apply to."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    plain = (
        blocks is not None
        and getattr(visual, "attn_pool", None) is None
        and not getattr(visual, "final_ln_after_pool", False)
        and getattr(visual, "pool_type", "tok") == "tok"
        and isinstance(getattr(blocks[-1], "attn", None), nn.MultiheadAttention)
    )
    if not plain:
        raise ValueError(
            f"dense maps need an open_clip VisionTransformer pooled at the class token with "
            f"plain multi-head attention, got {type(visual).__name__}: use window-level maps "
            "for this model"
        )


def patch_grid(model: ClipModel) -> int:
    """Patches per side of the model's image tower (e.g. 14 for a ViT-B/16 at 224 px).

    Args:
        model: a loaded model (:func:`dgtrs_geo.load_model`).

    Returns:
        The grid size.
    """
    _check_vit(model.clip.visual)
    return int(round(math.sqrt(model.clip.visual.positional_embedding.shape[0] - 1)))


# open_clip ships no type information: its towers and blocks are Any here.
def _tokens_before_last_block(visual: Any, pixels: Tensor) -> Tensor:
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return cast(Tensor, x)


def _dense_last_block(block: Any, x: Tensor, method: str) -> Tensor:
    attention: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, -1)
    match method:
        case "maskclip":
            x = x + block.ls_1(attention.out_proj(v))
            return cast(Tensor, x + block.ls_2(block.mlp(block.ln_2(x))))
        case "clearclip":
            batch, tokens, width = q.shape
            heads = attention.num_heads

            def split(t: Tensor) -> Tensor:
                return t.reshape(batch, tokens, heads, width // heads).transpose(1, 2)

            mixed = F.scaled_dot_product_attention(split(q), split(q), split(v))
            out: Tensor = attention.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width))
            return out
        case _:
            raise ValueError(f"dense method must be one of {DENSE_METHODS}, got {method!r}")


@torch.inference_mode()
def encode_patches(
    model: ClipModel, pixels: Tensor, method: str = "maskclip"
) -> tuple[Tensor, Tensor]:
    """Window and patch embeddings of a batch, from one pass through all blocks but the last.

    Args:
        model: a loaded model with an open_clip ViT image tower.
        pixels: the model's normalised input ``[B, 3, S, S]``.
        method: one of :data:`DENSE_METHODS`.

    Returns:
        ``(windows [B, D], patches [B, g, g, D])``, L2-normalised float32 on the CPU; the window
        embeddings equal ``model.encode_image(pixels)``.

    Raises:
        ValueError: for another kind of image tower or an unknown method.
    """
    visual = model.clip.visual
    _check_vit(visual)
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError("dense maps need a batch-first open_clip transformer")
    x = _tokens_before_last_block(visual, pixels.to(model.device, torch.float32))
    last = visual.transformer.resblocks[-1]
    window = visual.ln_post(last(x)[:, 0]) @ visual.proj
    patches = visual.ln_post(_dense_last_block(last, x, method)[:, 1:]) @ visual.proj
    grid = int(round(math.sqrt(patches.shape[1])))
    patches = patches.reshape(patches.shape[0], grid, grid, -1)
    return F.normalize(window.float(), dim=-1).cpu(), F.normalize(patches.float(), dim=-1).cpu()


def encode_dense(
    model: ClipModel,
    image: np.ndarray[Any, Any],
    windows: np.ndarray[Any, Any],
    method: str = "maskclip",
    batch_size: int = 32,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Embed every window of an image and each of its patches.

    Args:
        model: a loaded model with an open_clip ViT image tower.
        image: uint8 ``[H, W, 3]`` RGB.
        windows: ``[N, 4]`` ``(col_off, row_off, width, height)`` pixel windows.
        method: one of :data:`DENSE_METHODS`.
        batch_size: windows per forward (a batch holds windows of one shape).

    Returns:
        ``(windows [N, D], patches [N, g, g, D])`` float32 unit vectors.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    window_parts, patch_parts = [], []
    start = 0
    while start < len(windows):
        shape = tuple(windows[start, 2:])
        stop = start
        while (
            stop < len(windows) and stop - start < batch_size and tuple(windows[stop, 2:]) == shape
        ):
            stop += 1
        crops = torch.stack([pixels[:, y : y + h, x : x + w] for x, y, w, h in windows[start:stop]])
        batch = preprocess_batch(crops.to(model.device), model)
        window, patches = encode_patches(model, batch, method)
        window_parts.append(window.numpy())
        patch_parts.append(patches.numpy())
        start = stop
    return np.concatenate(window_parts), np.concatenate(patch_parts)


def patch_mean_map(
    windows: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], shape: tuple[int, int]
) -> np.ndarray[Any, Any]:
    """Per-pixel mean of the scores of the patches covering each pixel.

    Args:
        windows: ``[N, 4]`` ``(col_off, row_off, width, height)`` pixel windows.
        scores: ``[N, g, g]`` patch scores (row-major patches; ``g = 1``: whole windows).
        shape: ``(height, width)`` of the map.

    Returns:
        float64 ``[height, width]``; 0 where no patch covers a pixel.

    Raises:
        ValueError: a window does not lie inside the map (numpy would wrap negative offsets
            round to the other side).
    """
    height, width = shape
    outside = (windows[:, :2] < 0).any(1) | (windows[:, 0] + windows[:, 2] > width)
    outside |= windows[:, 1] + windows[:, 3] > height
    if outside.any():
        raise ValueError(
            f"window {windows[outside][0].tolist()} is not inside the {height} x {width} map"
        )
    grid = scores.shape[1]
    steps = np.arange(grid + 1) / grid
    x0 = np.round(windows[:, :1] + steps[None, :] * windows[:, 2:3]).astype(int)  # [N, g + 1]
    y0 = np.round(windows[:, 1:2] + steps[None, :] * windows[:, 3:4]).astype(int)
    # Patch (i, j) covers rows y0[i]..y0[i+1] and columns x0[j]..x0[j+1] (end exclusive).
    top, bottom = y0[:, :-1, None].repeat(grid, 2), y0[:, 1:, None].repeat(grid, 2)
    left, right = x0[:, None, :-1].repeat(grid, 1), x0[:, None, 1:].repeat(grid, 1)
    sums = np.zeros((height + 1, width + 1))
    counts = np.zeros((height + 1, width + 1))
    for target, values in ((sums, scores), (counts, np.ones_like(scores))):
        for rows, cols, sign in (
            (top, left, 1),
            (top, right, -1),
            (bottom, left, -1),
            (bottom, right, 1),
        ):
            np.add.at(target, (rows.ravel(), cols.ravel()), sign * values.ravel())
    sums = sums.cumsum(0).cumsum(1)[:height, :width]
    counts = counts.cumsum(0).cumsum(1)[:height, :width]
    mean: np.ndarray[Any, Any] = sums / np.maximum(np.round(counts), 1)
    return mean


def dense_probability_maps(
    image: np.ndarray[Any, Any],
    queries: Sequence[str],
    model: ClipModel,
    scales: Sequence[int] = REFERENCE_SCALES,
    method: str = "maskclip",
    sigma: float | None = None,
    window_weight: float = 0.0,
    batch_size: int = 32,
) -> list[np.ndarray[Any, Any]]:
    """Return patch-level probability maps of queries over an image, in pixel coordinates.

    Windows are planned as in the published recipe (:func:`plan_windows`) and encoded once for
    all queries; each patch of each window is scored against a query; every pixel takes the mean
    score of the patches covering it; the map is smoothed and min-max normalised.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        queries: the texts to localize.
        model: a loaded model with an open_clip ViT image tower.
        scales: window sizes in pixels.
        method: one of :data:`DENSE_METHODS`.
        sigma: Gaussian smoothing in pixels (``None``: half a patch of the smallest window).
        window_weight: share of the window's own score in each patch's score (0: patches
            only; 1: the window-level map at patch resolution).
        batch_size: windows per forward.

    Returns:
        One float32 ``[H, W]`` map in [0, 1] per query.

    Raises:
        ValueError: on an empty query, an unknown method or a model without a ViT tower.
    """
    if not queries or any(not q or not q.strip() for q in queries):
        raise ValueError("every query must describe what to find, e.g. 'a tennis court'")
    height, width = image.shape[:2]
    plan = plan_windows(width, height, scales)
    if not 0.0 <= window_weight <= 1.0:
        raise ValueError(f"window_weight must lie in [0, 1], got {window_weight}")
    windows, patches = encode_dense(model, image, plan.windows, method, batch_size)
    texts = model.encode_text(list(queries)).numpy()
    sigma = min(scales) / patch_grid(model) / 2 if sigma is None else sigma
    maps = []
    for text in texts:
        scores = (1 - window_weight) * (patches @ text) + window_weight * (windows @ text)[
            :, None, None
        ]
        mean = patch_mean_map(plan.windows, scores, (height, width))
        if sigma > 0:
            mean = gaussian_filter(mean, sigma, mode="nearest")
        low, high = float(mean.min()), float(mean.max())
        out = (mean - low) / (high - low) if high > low else np.zeros_like(mean)
        maps.append(out.astype(np.float32))
    return maps


def patch_index_bytes(num_windows: int, grid: int, dim: int, bytes_per_value: int = 2) -> int:
    """Disk taken by the patch embeddings of ``num_windows`` windows.

    Args:
        num_windows: windows in the index.
        grid: patches per side (:func:`patch_grid`).
        dim: embedding size.
        bytes_per_value: 2 for float16 (enough for cosine scores), 4 for float32.

    Returns:
        Bytes.
    """
    return num_windows * grid * grid * dim * bytes_per_value
