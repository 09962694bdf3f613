"""Window geometry: footprints in the scene's CRS, polygons in EPSG:4326, distances in metres.

Windows are ``(col_off, row_off, width, height)`` in scene pixels. Their EPSG:4326 polygons follow
each edge through :data:`EDGE_POINTS` points, so a window of a scene in a projected CRS keeps its
shape in longitude and latitude (edges of a UTM square are not straight lines in degrees).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

__all__ = [
    "EARTH_RADIUS_M",
    "centres_distance_m",
    "window_bounds",
    "window_polygons_4326",
]

#: Points along each window edge, corners included once.
EDGE_POINTS = 4

#: Mean Earth radius (IUGG), for distances between window centres.
EARTH_RADIUS_M = 6_371_008.8


def _apply(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b, c, d, e, f = list(transform)[:6]
    return a * cols + b * rows + c, d * cols + e * rows + f


def window_bounds(windows: np.ndarray, transform: Affine) -> np.ndarray:
    """Return float64 ``[N, 4]`` bounds ``(minx, miny, maxx, maxy)`` of windows in the scene CRS."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    cols = np.stack([w[:, 0], w[:, 0] + w[:, 2], w[:, 0], w[:, 0] + w[:, 2]], axis=1)
    rows = np.stack([w[:, 1], w[:, 1], w[:, 1] + w[:, 3], w[:, 1] + w[:, 3]], axis=1)
    xs, ys = _apply(transform, cols, rows)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def _ring(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``[N, 4 * EDGE_POINTS + 1]`` of each window's closed outline."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    t = np.arange(EDGE_POINTS) / EDGE_POINTS
    zero, one = np.zeros_like(t), np.ones_like(t)
    # Top edge left to right, right edge down, bottom right to left, left edge up, then close.
    u = np.concatenate([t, one, 1 - t, zero, [0.0]])
    v = np.concatenate([zero, t, one, 1 - t, [0.0]])
    cols = w[:, :1] + w[:, 2:3] * u[None, :]
    rows = w[:, 1:2] + w[:, 3:4] * v[None, :]
    return cols, rows


@lru_cache(maxsize=64)
def _to_4326(crs_wkt: str) -> Transformer:
    """Return the transformer of a scene CRS to EPSG:4326.

    Building one costs milliseconds, more than transforming a scene's windows, and the scenes of
    a catalog share a few CRSs.
    """
    return Transformer.from_crs(crs_wkt, "EPSG:4326", always_xy=True)


def window_polygons_4326(
    windows: np.ndarray, transform: Affine, crs: CRS
) -> tuple[np.ndarray, np.ndarray]:
    """Return each window's outline in EPSG:4326 (longitude, latitude) and its bounds.

    Args:
        windows: ``[N, 4]`` pixel windows.
        transform: the scene's geotransform.
        crs: the scene's CRS.

    Returns:
        ``(polygons, bounds)``: a shapely Polygon array ``[N]`` and float64 ``[N, 4]``
        ``(min_lon, min_lat, max_lon, max_lat)``.

    """
    cols, rows = _ring(windows)
    xs, ys = _apply(transform, cols, rows)
    lon, lat = _to_4326(crs.to_wkt()).transform(xs.ravel(), ys.ravel())
    lon = np.asarray(lon).reshape(xs.shape)
    lat = np.asarray(lat).reshape(ys.shape)
    polygons = shapely.polygons(np.stack([lon, lat], axis=-1))
    bounds = np.stack([lon.min(1), lat.min(1), lon.max(1), lat.max(1)], axis=1)
    return polygons, bounds


def centres_distance_m(bounds: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between the centres of EPSG:4326 boxes.

    Args:
        bounds: ``[N, 4]`` boxes ``(min_lon, min_lat, max_lon, max_lat)``.
        other: one box ``[4]`` or ``[N, 4]``.

    Returns:
        float64 ``[N]``.

    """
    lon1 = np.radians((bounds[..., 0] + bounds[..., 2]) / 2)
    lat1 = np.radians((bounds[..., 1] + bounds[..., 3]) / 2)
    lon2 = np.radians((other[..., 0] + other[..., 2]) / 2)
    lat2 = np.radians((other[..., 1] + other[..., 3]) / 2)
    h = (
        np.sin((lat2 - lat1) / 2) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
