"""From window scores to a heatmap: accumulation, normalisation, smoothing.

Each grid cell gets the mean score of the windows covering it. Adding a window's score to one
rectangle of a 2-D difference array touches four entries, so all windows accumulate with one
scatter-add and two cumulative sums, whatever their number and size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["accumulate", "auto_cell", "grid_windows", "normalise", "smooth"]

#: Longest side of a fast-mode heatmap grid; larger rasters get cells of several pixels.
MAX_GRID_SIDE = 4096

#: Cells per side of the smallest window in a fast-mode grid: window borders fall every half
#: window, so finer cells add pixels, not information.
CELLS_PER_WINDOW = 16


def auto_cell(scales: Sequence[int], width: int, height: int) -> int:
    """Return the fast-mode heatmap cell side in pixels for a plan of ``scales`` over a region.

    A sixteenth of the smallest window (windows are cut to the region's size), and coarse
    enough that the longer side of the grid stays within :data:`MAX_GRID_SIDE` cells.
    """
    smallest = min(min(scales), max(width, height))
    return max(1, smallest // CELLS_PER_WINDOW, math.ceil(max(width, height) / MAX_GRID_SIDE))


def grid_windows(
    windows: np.ndarray, region: tuple[int, int, int, int], cell: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Map pixel windows onto a grid of ``cell`` x ``cell`` pixel cells over ``region``.

    Args:
        windows: ``[N, 4]`` ``(col_off, row_off, width, height)`` in raster pixels.
        region: ``(col_off, row_off, width, height)`` the grid covers.
        cell: cell side in pixels (1 for a full-resolution grid).

    Returns:
        ``(boxes, shape)``: int64 ``[N, 4]`` ``(x0, y0, x1, y1)`` cell bounds (end exclusive,
        at least one cell each) and the grid shape ``(rows, cols)``.

    """
    col0, row0, width, height = region
    shape = (math.ceil(height / cell), math.ceil(width / cell))
    w = np.asarray(windows, dtype=np.int64)
    x0 = np.clip(np.round((w[:, 0] - col0) / cell), 0, shape[1] - 1).astype(np.int64)
    y0 = np.clip(np.round((w[:, 1] - row0) / cell), 0, shape[0] - 1).astype(np.int64)
    # Windows that end at the region's edge cover its last, partial cell too.
    right, bottom = w[:, 0] + w[:, 2] - col0, w[:, 1] + w[:, 3] - row0
    x1 = np.where(right >= width, shape[1], np.round(right / cell))
    y1 = np.where(bottom >= height, shape[0], np.round(bottom / cell))
    x1 = np.clip(x1, x0 + 1, shape[1]).astype(np.int64)
    y1 = np.clip(y1, y0 + 1, shape[0]).astype(np.int64)
    return np.stack([x0, y0, x1, y1], axis=1), shape


def accumulate(boxes: np.ndarray, scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return the per-cell mean of the scores of the boxes covering each cell.

    Args:
        boxes: int ``[N, 4]`` ``(x0, y0, x1, y1)`` cell bounds, end exclusive.
        scores: ``[N]`` or ``[N, Q]`` scores (one column per query).
        shape: grid ``(rows, cols)``.

    Returns:
        float32 ``[rows, cols]`` (or ``[Q, rows, cols]``), NaN where no box covers a cell.

    """
    scores = np.asarray(scores, dtype=np.float64)
    single = scores.ndim == 1
    if single:
        scores = scores[:, None]
    rows, cols = shape
    x0, y0, x1, y1 = (np.asarray(boxes[:, i], dtype=np.int64) for i in range(4))
    sums = np.zeros((scores.shape[1], rows + 1, cols + 1))
    counts = np.zeros((rows + 1, cols + 1))
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(counts, (ys, xs), sign)
        for q in range(scores.shape[1]):
            np.add.at(sums[q], (ys, xs), sign * scores[:, q])
    counts = counts.cumsum(0).cumsum(1)[:rows, :cols]
    sums = sums.cumsum(1).cumsum(2)[:, :rows, :cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Cumulative sums leave tiny residues where counts return to zero: round them away.
        covered = np.rint(counts) > 0
        mean = np.where(covered, sums / np.where(covered, counts, 1), np.nan).astype(np.float32)
    return mean[0] if single else mean


def normalise(heatmap: np.ndarray, mode: str = "minmax") -> np.ndarray:
    """Normalise a heatmap of cosine scores, ignoring NaN.

    Args:
        heatmap: float array.
        mode: ``"minmax"`` maps the finite range to [0, 1] like the published recipe (a flat map
            becomes all 0); ``"cosine"`` keeps raw cosine similarities, for absolute thresholds
            comparable across rasters.

    Returns:
        float32 array of the same shape.

    """
    match mode:
        case "cosine":
            return heatmap.astype(np.float32)
        case "minmax":
            finite = np.isfinite(heatmap)
            if not finite.any():
                return heatmap.astype(np.float32)
            lo, hi = float(heatmap[finite].min()), float(heatmap[finite].max())
            scale = 1.0 / (hi - lo) if hi > lo else 0.0
            return ((heatmap - lo) * scale).astype(np.float32)
        case _:
            raise ValueError(f"normalise mode must be 'minmax' or 'cosine', got {mode!r}")


def smooth(heatmap: np.ndarray, sigma_cells: float) -> np.ndarray:
    """Gaussian smoothing that ignores NaN cells (normalised convolution) and keeps them NaN.

    Args:
        heatmap: float ``[rows, cols]``.
        sigma_cells: standard deviation in grid cells; 0 returns the input.

    Returns:
        float32 array of the same shape.

    """
    if sigma_cells <= 0:
        return heatmap.astype(np.float32)
    valid = np.isfinite(heatmap)
    if valid.all():
        return ndimage.gaussian_filter(heatmap.astype(np.float32), sigma_cells, mode="nearest")
    filled = np.where(valid, heatmap, 0.0).astype(np.float64)
    num = ndimage.gaussian_filter(filled, sigma_cells, mode="nearest")
    den = ndimage.gaussian_filter(valid.astype(np.float64), sigma_cells, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid & (den > 1e-12), num / den, np.nan)
    return out.astype(np.float32)
