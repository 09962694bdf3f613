"""Window plans: which square crops of a raster get an embedding.

The published semantic-localization recipe tiles an image with windows of several sizes, two grids
per size (offset 0 and half a window), each window that runs past an edge moved back so it ends at
that edge, duplicates dropped. Windows here are ``(col_off, row_off, width, height)`` in pixels of
the full raster, so one plan serves both the index (footprints) and the heatmap (accumulation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["WindowPlan", "plan_windows", "scales_to_pixels"]

#: The window sizes of the published recipe, in pixels.
REFERENCE_SCALES: tuple[int, ...] = (256, 512, 768)


@dataclass(frozen=True)
class WindowPlan:
    """Windows of one raster (or of an area of interest inside it).

    Attributes:
        windows: int64 array ``[N, 4]`` of ``(col_off, row_off, width, height)`` in raster pixels.
        scales: the window sizes in pixels the plan was made from.
        width: raster width in pixels.
        height: raster height in pixels.
        region: ``(col_off, row_off, width, height)`` of the planned area (the AOI, or the raster).

    """

    windows: np.ndarray[Any, Any]
    scales: tuple[int, ...]
    width: int
    height: int
    region: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))

    def __len__(self) -> int:
        return len(self.windows)

    def to_json(self) -> dict[str, Any]:
        """Return the plan's parameters (not its windows) as a JSON-able dict."""
        return {
            "scales": list(self.scales),
            "width": self.width,
            "height": self.height,
            "region": list(self.region),
            "count": len(self),
        }


def _starts(length: int, size: int) -> np.ndarray[Any, Any]:
    """Window starts along one axis: grids at offsets 0 and size // 2, clamped to the edge."""
    if size >= length:
        return np.zeros(1, dtype=np.int64)
    starts = [np.arange(offset, length, size) for offset in (0, size // 2)]
    starts_all: np.ndarray[Any, Any] = np.minimum(np.concatenate(starts), length - size)
    return starts_all


def plan_windows(
    width: int,
    height: int,
    scales: Sequence[int] = REFERENCE_SCALES,
    region: tuple[int, int, int, int] | None = None,
) -> WindowPlan:
    """Plan square windows over a raster, as the published recipe does.

    For each scale ``s``, two grids with stride ``s`` start at offsets 0 and ``s // 2`` (each grid
    is the product of its column and row starts); a window running past the right or bottom edge
    is moved back to end at the edge; a side shorter than ``s`` gets one window spanning it; windows
    that coincide are kept once. Windows are sorted by size, then row, then column, so batches of
    consecutive windows share a shape.

    Args:
        width: raster width in pixels.
        height: raster height in pixels.
        scales: window sizes in pixels.
        region: optional ``(col_off, row_off, width, height)`` to plan inside (an area of interest);
            windows stay inside it.

    Returns:
        The plan.

    Raises:
        ValueError: if a size or scale is not positive, or the region leaves the raster.

    """
    if width <= 0 or height <= 0:
        raise ValueError(f"raster size must be positive, got {width} x {height}")
    scales = tuple(int(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"window scales must be positive pixel sizes, got {scales}")
    col0, row0, region_w, region_h = region if region is not None else (0, 0, width, height)
    if (
        region_w <= 0
        or region_h <= 0
        or col0 < 0
        or row0 < 0
        or col0 + region_w > width
        or row0 + region_h > height
    ):
        raise ValueError(
            f"area of interest {region} (col, row, width, height) does not fit in the "
            f"{width} x {height} raster"
        )
    blocks = []
    for s in sorted(set(scales)):
        cols = _starts(region_w, s)
        rows = _starts(region_h, s)
        # The two grids pair offset-0 columns with offset-0 rows and half-offset with half-offset.
        n_col0 = len(np.arange(0, region_w, s)) if s < region_w else 1
        n_row0 = len(np.arange(0, region_h, s)) if s < region_h else 1
        for col_part, row_part in (
            (cols[:n_col0], rows[:n_row0]),
            (cols[n_col0:], rows[n_row0:]),
        ):
            if len(col_part) == 0 or len(row_part) == 0:
                continue
            cc, rr = np.meshgrid(col_part, row_part)
            w, h = min(s, region_w), min(s, region_h)
            blocks.append(
                np.stack(
                    [
                        cc.ravel() + col0,
                        rr.ravel() + row0,
                        np.full(cc.size, w),
                        np.full(cc.size, h),
                    ],
                    axis=1,
                )
            )
    windows = np.unique(np.concatenate(blocks).astype(np.int64), axis=0)
    order = np.lexsort((windows[:, 0], windows[:, 1], windows[:, 3], windows[:, 2]))
    return WindowPlan(
        windows=windows[order],
        scales=scales,
        width=int(width),
        height=int(height),
        region=(int(col0), int(row0), int(region_w), int(region_h)),
    )


def scales_to_pixels(scales_m: Sequence[float], gsd_m: float) -> tuple[int, ...]:
    """Convert window sizes in metres to pixels for a raster of ground sample distance ``gsd_m``.

    Args:
        scales_m: window sizes in metres.
        gsd_m: metres per pixel (see :func:`dgtrs_geo.localization.raster.ground_sample_distance`).

    Returns:
        Window sizes in pixels, at least 1 each.

    Raises:
        ValueError: if the GSD or a scale is not positive.

    """
    if not gsd_m > 0 or not math.isfinite(gsd_m):
        raise ValueError(f"ground sample distance must be a positive number of metres, got {gsd_m}")
    if not scales_m or min(scales_m) <= 0:
        raise ValueError(f"window scales must be positive sizes in metres, got {list(scales_m)}")
    return tuple(max(1, round(s / gsd_m)) for s in scales_m)
