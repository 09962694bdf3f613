"""Polygons around the parts of a heatmap above a threshold."""

from __future__ import annotations

import functools
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

__all__ = ["heatmap_polygons", "polygon_areas"]

COLUMNS = ["query", "score_max", "score_mean", "area", "geometry"]


#: Longest edge, in metres on the ground: longer edges are split before measuring, so an edge
#: straight in the map's CRS is followed closely. The area error falls with the square of this
#: length: at 1 km it was 1e-7 relative (UTM, 40 km polygon at 60 degrees N), 5e-10 (Web
#: Mercator) and 5e-6 (polar stereographic, 400 km square around the pole); edges along
#: parallels and meridians (north-up grids in EPSG:4326 and Web Mercator) are exact at any length.
_SEGMENT_M = 1000.0

#: WGS 84 semi-major axis (m) and squared eccentricity.
_A = 6378137.0
_E2 = (1 / 298.257223563) * (2 - 1 / 298.257223563)


def _authalic_q(lat: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Snyder's ``q(phi)`` (Map Projections: A Working Manual, eq. 3-12).

    The ellipsoid's area between the equator and latitude ``phi`` is ``a^2 q / 2`` per radian of
    longitude.
    """
    s = np.sin(np.radians(lat))
    e = np.sqrt(_E2)
    q: np.ndarray[Any, Any] = (1 - _E2) * (s / (1 - _E2 * s * s) + np.arctanh(e * s) / e)
    return q


_QP = float(_authalic_q(np.array(90.0)))


def _ring_areas(
    lonlat: np.ndarray[Any, Any], ring: np.ndarray[Any, Any], count: int
) -> np.ndarray[Any, Any]:
    """Areas in m² on the WGS 84 ellipsoid of closed lon/lat rings (vertex ``i`` in ring ``ring[i]``).

    The area between a ring and the equator is ``a^2 / 2`` times the integral of ``q`` over
    longitude along the ring; the integral runs edge by edge with the trapezoid rule, exact for
    edges along parallels and meridians (see :data:`_SEGMENT_M` for other edges). Longitude
    steps take the short way round (rings may cross the antimeridian); a ring that winds around
    a pole is measured on that pole's side.
    """
    q = _authalic_q(lonlat[:, 1])
    same = ring[1:] == ring[:-1]
    dlon = np.radians(np.diff(lonlat[:, 0]))
    dlon = (dlon + np.pi) % (2 * np.pi) - np.pi
    edges = ring[:-1][same]
    integral = np.bincount(edges, weights=(dlon * (q[1:] + q[:-1]) / 2)[same], minlength=count)
    winding = np.rint(np.bincount(edges, weights=dlon[same], minlength=count) / (2 * np.pi))
    pole = np.sign(np.bincount(ring, weights=q, minlength=count))
    areas: np.ndarray[Any, Any] = _A**2 / 2 * np.abs(integral - winding * pole * 2 * np.pi * _QP)
    return areas


def polygon_areas(geoms: list[BaseGeometry], crs: CRS | None) -> list[float]:
    """Return each polygon's area on the WGS 84 ellipsoid in square metres, whatever the CRS.

    Polygons are densified (edges of at most 1 km), transformed to EPSG:4326 and measured on the
    ellipsoid (:func:`_ring_areas`, vectorised; checked against ``pyproj.Geod`` in the tests): a
    planar area in Web Mercator would be too large by the square of the scale factor (+22 % at
    25 degrees latitude). Without a CRS, areas are in square pixels; in a local (engineering) CRS,
    which has no place on the Earth, they are planar, in the square of its unit.

    Args:
        geoms: polygons or multipolygons in ``crs``.
        crs: their CRS.

    Returns:
        One area per geometry.

    """
    array = np.asarray(geoms, dtype=object)
    if crs is None or len(array) == 0 or not (crs.is_geographic or crs.is_projected):
        return [float(a) for a in shapely.area(array)]
    if crs.is_geographic:
        segment = _SEGMENT_M / 111_000  # degrees; shorter along parallels away from the equator
    else:
        segment = _SEGMENT_M / crs.linear_units_factor[1]
    bounds = shapely.bounds(array)
    long = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]) > segment
    dense = array.copy()
    dense[long] = shapely.segmentize(array[long], segment)  # only those with long edges
    parts, owner = shapely.get_parts(dense, return_index=True)
    rings, part = shapely.get_rings(parts, return_index=True)
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    if crs != CRS.from_epsg(4326):
        coords = np.column_stack(transform(crs, "EPSG:4326", coords[:, 0], coords[:, 1]))
    # The first ring of each part is its exterior; the others are holes.
    exterior = np.r_[True, part[1:] != part[:-1]]
    signed = np.where(exterior, 1.0, -1.0) * _ring_areas(coords, ring, len(rings))
    areas = np.bincount(owner[part], weights=signed, minlength=len(array))
    return [float(a) for a in areas]


def _polygon(rings: list[list[tuple[float, float]]]) -> BaseGeometry:
    """A GeoJSON polygon's rings as a shapely polygon, built in C (no per-vertex Python)."""
    shell, *holes = (shapely.linearrings(np.asarray(ring, dtype=np.float64)) for ring in rings)
    return shapely.polygons(shell, holes=holes or None)


def _frame_crs(crs: CRS | None) -> pyproj.CRS | None:
    """The CRS as geopandas keeps it, parsed once per CRS (parsing WKT costs a millisecond)."""
    return None if crs is None else _pyproj_crs(crs.to_wkt())


@functools.lru_cache(maxsize=16)
def _pyproj_crs(wkt: str) -> pyproj.CRS:
    return pyproj.CRS.from_wkt(wkt)


def heatmap_polygons(
    heatmap: np.ndarray[Any, Any],
    transform: Affine,
    crs: CRS | None,
    threshold: float,
    query: str = "",
) -> gpd.GeoDataFrame:
    """Return one polygon per 4-connected region of cells at or above ``threshold``.

    Args:
        heatmap: float ``[rows, cols]`` (NaN cells are never inside a polygon).
        transform: the heatmap grid's geotransform.
        crs: its CRS (``None``: pixel coordinates).
        threshold: the score a cell needs.
        query: written to the ``query`` column.

    Returns:
        A GeoDataFrame with columns ``query``, ``score_max``, ``score_mean`` (of the heatmap cells
        inside), ``area`` (square metres when the CRS is known) and ``geometry``, sorted by
        ``score_max`` descending.

    """
    mask = np.isfinite(heatmap) & (heatmap >= threshold)
    labels, count = ndimage.label(mask)
    if count == 0:
        # Typed empty columns, so an empty GeoPackage still has a text ``query`` field.
        columns = {"query": pd.Series([], dtype=str)}
        columns |= {c: pd.Series([], dtype=float) for c in COLUMNS[1:-1]}
        return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=_frame_crs(crs)))
    # Per-region statistics with bincount and ufunc.at: no sort of the labels.
    inside, values = labels[mask], heatmap[mask].astype(np.float64)
    sizes = np.bincount(inside, minlength=count + 1)
    means = np.bincount(inside, weights=values, minlength=count + 1) / np.maximum(sizes, 1)
    maxima = np.full(count + 1, -np.inf)
    np.maximum.at(maxima, inside, values)
    rows = []
    for geom, label in rasterio.features.shapes(
        labels.astype(np.int32), mask=mask, connectivity=4, transform=transform
    ):
        rows.append((int(label), _polygon(geom["coordinates"])))
    geoms = [g for _, g in rows]
    frame = gpd.GeoDataFrame(
        {
            "query": [query] * len(rows),
            "score_max": [float(maxima[label]) for label, _ in rows],
            "score_mean": [float(means[label]) for label, _ in rows],
            "area": polygon_areas(geoms, crs),
        },
        geometry=gpd.GeoSeries(geoms, crs=_frame_crs(crs)),
    )
    return frame.sort_values("score_max", ascending=False, ignore_index=True)
