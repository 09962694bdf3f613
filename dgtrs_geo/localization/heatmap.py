"""From window scores to a heatmap: the grid, accumulation, normalisation, smoothing.

The grid covers the region (raster or area of interest) exactly: ``ceil(extent / cell)`` cells per
axis, each ``extent / cells`` pixels wide, so its bounds are the region's and no cell overhangs.
Each grid cell gets the mean score of the windows covering its centre. Adding a window's score to one
rectangle of a 2-D difference array touches four entries, so all windows accumulate with one
scatter-add and two cumulative sums, whatever their number and size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine
from scipy import ndimage

__all__ = [
    "accumulate",
    "auto_cell",
    "grid_shape",
    "grid_transform",
    "grid_windows",
    "normalise",
    "smooth",
]

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


def grid_shape(region: tuple[int, int, int, int], cell: int) -> tuple[int, int]:
    """Return ``(rows, cols)`` of the grid over ``region`` with cells of about ``cell`` pixels.

    Each axis gets ``ceil(extent / cell)`` cells; :func:`grid_transform` then stretches them to
    cover the region exactly, so the last row and column never pass its edge.
    """
    return math.ceil(region[3] / cell), math.ceil(region[2] / cell)


def grid_transform(
    transform: Affine, region: tuple[int, int, int, int], shape: tuple[int, int]
) -> Affine:
    """Return the geotransform of a ``shape`` grid covering ``region`` of a raster exactly.

    Args:
        transform: the raster's geotransform.
        region: ``(col_off, row_off, width, height)`` in raster pixels.
        shape: the grid's ``(rows, cols)`` (see :func:`grid_shape`).

    Returns:
        A transform whose cells are ``width / cols`` by ``height / rows`` raster pixels, so the
        grid's bounds are the region's bounds.

    """
    col0, row0, width, height = region
    rows, cols = shape
    return transform @ Affine.translation(col0, row0) @ Affine.scale(width / cols, height / rows)


def _first_centre_at_or_after(
    offsets: np.ndarray[Any, Any], cells: int, extent: int
) -> np.ndarray[Any, Any]:
    """Index of the first cell whose centre lies at or after each pixel offset along one axis.

    Cell ``j`` of ``cells`` cells over ``extent`` pixels has its centre at
    ``(j + 0.5) * extent / cells``; ``(2j + 1) * extent >= 2 * offset * cells`` is solved in
    integers, so a centre that falls exactly on a window edge is decided exactly.
    """
    first = -((extent - 2 * offsets * cells) // (2 * extent))
    return np.clip(first, 0, cells)


def grid_windows(
    windows: np.ndarray[Any, Any], region: tuple[int, int, int, int], cell: int
) -> tuple[np.ndarray[Any, Any], tuple[int, int]]:
    """Map pixel windows onto the grid of :func:`grid_shape` cells covering ``region`` exactly.

    A window covers the cells whose centres lie inside it (its left and top edges included, its
    right and bottom edges excluded), so each cell gets the windows covering its centre pixel
    position; a window smaller than a cell may cover none.

    Args:
        windows: ``[N, 4]`` ``(col_off, row_off, width, height)`` in raster pixels.
        region: ``(col_off, row_off, width, height)`` the grid covers.
        cell: nominal cell side in pixels (1 for a full-resolution grid).

    Returns:
        ``(boxes, shape)``: int64 ``[N, 4]`` ``(x0, y0, x1, y1)`` cell bounds (end exclusive;
        empty when ``x1 == x0`` or ``y1 == y0``) and the grid shape ``(rows, cols)``.

    """
    col0, row0, width, height = region
    shape = grid_shape(region, cell)
    rows, cols = shape
    w = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    x0 = _first_centre_at_or_after(w[:, 0] - col0, cols, width)
    x1 = _first_centre_at_or_after(w[:, 0] + w[:, 2] - col0, cols, width)
    y0 = _first_centre_at_or_after(w[:, 1] - row0, rows, height)
    y1 = _first_centre_at_or_after(w[:, 1] + w[:, 3] - row0, rows, height)
    return np.stack([x0, y0, x1, y1], axis=1), shape


def accumulate(
    boxes: np.ndarray[Any, Any], scores: np.ndarray[Any, Any], shape: tuple[int, int]
) -> np.ndarray[Any, Any]:
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
    # The four corners of every box on the (rows + 1) x (cols + 1) difference array, flattened,
    # so each sum is one bincount.
    corners = np.concatenate([y0 * (cols + 1) + x0, y0 * (cols + 1) + x1,
                              y1 * (cols + 1) + x0, y1 * (cols + 1) + x1])  # fmt: skip
    signs = np.repeat([1.0, -1.0, -1.0, 1.0], len(x0))
    size = (rows + 1) * (cols + 1)
    counts = np.bincount(corners, weights=signs, minlength=size).reshape(rows + 1, cols + 1)
    sums = np.stack(
        [
            np.bincount(corners, weights=signs * np.tile(column, 4), minlength=size)
            for column in scores.T
        ]
    ).reshape(-1, rows + 1, cols + 1)
    counts = counts.cumsum(0).cumsum(1)[:rows, :cols]
    sums = sums.cumsum(1).cumsum(2)[:, :rows, :cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Cumulative sums leave tiny residues where counts return to zero: round them away.
        covered = np.rint(counts) > 0
        mean = np.where(covered, sums / np.where(covered, counts, 1), np.nan).astype(np.float32)
    return mean[0] if single else mean


def normalise(heatmap: np.ndarray[Any, Any], mode: str = "minmax") -> np.ndarray[Any, Any]:
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


def smooth(heatmap: np.ndarray[Any, Any], sigma_cells: float) -> np.ndarray[Any, Any]:
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
        blurred: np.ndarray[Any, Any] = ndimage.gaussian_filter(
            heatmap.astype(np.float32), sigma_cells, mode="nearest"
        )
        return blurred
    filled = np.where(valid, heatmap, 0.0).astype(np.float64)
    num = ndimage.gaussian_filter(filled, sigma_cells, mode="nearest")
    den = ndimage.gaussian_filter(valid.astype(np.float64), sigma_cells, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(valid & (den > 1e-12), num / den, np.nan)
    return out.astype(np.float32)
