"""Window sizes as a user sees them: pixels or metres, the layer's ground resolution, a count.

The engine scores square windows of each size, two grids per size (offsets 0 and half a window,
clamped at the edges; ``dgtrs_geo/localization/windows.py``). :func:`window_count` counts them
the same way, so the dock can say how many windows a choice gives before anything runs, and
:func:`default_sizes` picks sizes that give a useful map on the layer at hand instead of the
published 256/512/768 px, which give six windows on a 485 x 373 image.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

from qgis.core import (
    QgsDistanceArea,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
)

#: The smallest default window, in pixels (smaller ones show the model too little scene).
MIN_DEFAULT_PX = 32
#: The largest default base window: the published recipe's smallest.
MAX_DEFAULT_PX = 256
#: Default base window: this fraction of the shorter side, so each axis gets about six.
BASE_FRACTION = 1 / 6
#: Fewer windows than this give a blocky map; the dock says so.
FEW_WINDOWS = 30


def ground_resolution(layer: QgsRasterLayer) -> Optional[float]:
    """Return the layer's pixel size in metres (mean of x and y), or None without a CRS.

    Geographic layers are measured on the ellipsoid at the layer's centre, as the engine does.
    """
    crs = layer.crs()
    if not crs.isValid() or layer.width() <= 0:
        return None
    ux, uy = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    if not crs.isGeographic():
        factor = QgsUnitTypes.fromUnitToUnitFactor(
            crs.mapUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters
        )
        return (ux + uy) / 2 * factor
    area = QgsDistanceArea()
    area.setSourceCrs(crs, QgsProject.instance().transformContext())
    area.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
    centre = layer.extent().center()
    east = QgsPointXY(centre.x() + ux, centre.y())
    south = QgsPointXY(centre.x(), centre.y() - uy)
    return (area.measureLine(centre, east) + area.measureLine(centre, south)) / 2


def _starts(length: int, size: int, offset: int) -> List[int]:
    """Window starts of one grid along one axis, clamped so windows end at the edge."""
    if size >= length:
        return [0]
    return sorted({min(start, length - size) for start in range(offset, length, size)})


def window_count(width: int, height: int, sizes_px: Sequence[float]) -> int:
    """Return how many windows the engine plans for a ``width`` x ``height`` raster."""
    total = 0
    # Sizes at least as large as the raster both ways all give the one whole-raster window.
    shapes = {}
    for size in sorted({max(1, int(s)) for s in sizes_px}):
        shapes.setdefault((min(size, width), min(size, height)), size)
    for size in shapes.values():
        cols = [_starts(width, size, 0), _starts(width, size, size // 2)]
        rows = [_starts(height, size, 0), _starts(height, size, size // 2)]
        if size >= width:
            cols[1] = []
        if size >= height:
            rows[1] = []
        both = len(set(cols[0]) & set(cols[1])) * len(set(rows[0]) & set(rows[1]))
        total += len(cols[0]) * len(rows[0]) + len(cols[1]) * len(rows[1]) - both
    return total


def default_sizes(width: int, height: int) -> List[int]:
    """Return window sizes in pixels for a raster: a base, twice and three times it.

    The base is a sixth of the shorter side in multiples of 16 px, between
    :data:`MIN_DEFAULT_PX` and :data:`MAX_DEFAULT_PX`; larger sizes that do not fit in the
    raster are left out.
    """
    short = max(1, min(width, height))
    base = int(round(short * BASE_FRACTION / 16.0)) * 16
    base = max(MIN_DEFAULT_PX, min(MAX_DEFAULT_PX, base))
    sizes = [base * k for k in (1, 2, 3) if base * k <= short]
    return sizes or [min(base, short)]


def to_pixels(values: Sequence[float], unit: str, metres_per_pixel: Optional[float]) -> List[int]:
    """Convert sizes in ``unit`` ("px" or "m") to whole pixels.

    Raises:
        ValueError: for metres on a layer without a ground resolution.

    """
    if unit == "px":
        return [max(1, int(round(v))) for v in values]
    if not metres_per_pixel:
        raise ValueError("the layer has no CRS, so window sizes must be given in pixels")
    return [max(1, int(round(v / metres_per_pixel))) for v in values]


def to_unit(sizes_px: Sequence[int], unit: str, metres_per_pixel: Optional[float]) -> List[float]:
    """Convert pixel sizes to ``unit`` ("px" or "m", metres to 4 significant digits).

    Four digits keep a round trip back to pixels exact for windows up to 1000 px.
    """
    if unit == "px" or not metres_per_pixel:
        return [float(s) for s in sizes_px]
    return [_significant(s * metres_per_pixel, 4) for s in sizes_px]


def _significant(value: float, digits: int) -> float:
    if value <= 0:
        return value
    decimals = digits - 1 - int(math.floor(math.log10(value)))
    return round(value, decimals) if decimals > 0 else float(round(value, decimals))


def format_sizes(values: Sequence[float]) -> str:
    """Return sizes as the text the dock shows (``"64, 128, 192"``)."""
    return ", ".join("{:g}".format(v) for v in values)


def format_length(metres: float) -> str:
    """Return a length for people: ``"830 m"``, ``"8.3 km"``."""
    if metres >= 1000:
        return "{:g} km".format(_significant(metres / 1000, 3))
    return "{:g} m".format(_significant(metres, 3))
