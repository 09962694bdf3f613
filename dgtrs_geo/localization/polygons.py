"""Polygons around the parts of a heatmap above a threshold."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.warp import transform
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

__all__ = ["heatmap_polygons", "polygon_areas"]

COLUMNS = ["query", "score_max", "score_mean", "area", "geometry"]


#: Longest edge, in metres on the ground, measured as a geodesic: longer edges (straight in the
#: map's CRS, such as a parallel in EPSG:4326 or a line in Web Mercator) are split first. The
#: area error of an edge falls with the square of its length: under 1e-6 relative at 1 km.
_SEGMENT_M = 1000.0


def polygon_areas(geoms: list[BaseGeometry], crs: CRS | None) -> list[float]:
    """Return each polygon's geodesic area in square metres, whatever the CRS.

    Polygons are densified, transformed to EPSG:4326 and measured on the WGS 84 ellipsoid
    (``pyproj.Geod``, which also handles rings that cross the antimeridian): a planar area in Web
    Mercator would be too large by the square of the scale factor (+23 % at 25 degrees
    latitude). Without a CRS, areas are in square pixels.

    Args:
        geoms: polygons or multipolygons in ``crs``.
        crs: their CRS.

    Returns:
        One area per geometry.

    """
    array = np.asarray(geoms, dtype=object)
    if crs is None or len(array) == 0:
        return [float(a) for a in shapely.area(array)]
    if crs.is_geographic:
        segment = _SEGMENT_M / 111_000  # degrees; shorter along parallels away from the equator
    else:
        segment = _SEGMENT_M / (crs.linear_units_factor[1] if crs.linear_units else 1.0)
    dense = shapely.segmentize(array, segment)

    def to_lonlat(xy: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        lons, lats = transform(crs, "EPSG:4326", xy[:, 0], xy[:, 1])
        return np.column_stack([lons, lats])

    lonlat = dense if crs == CRS.from_epsg(4326) else shapely.transform(dense, to_lonlat)
    parts, owner = shapely.get_parts(lonlat, return_index=True)
    rings, part = shapely.get_rings(parts, return_index=True)
    # The first ring of each part is its exterior; the others are holes.
    exterior = np.r_[True, part[1:] != part[:-1]]
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    starts = np.searchsorted(ring, np.arange(len(rings) + 1))
    geod = Geod(ellps="WGS84")
    areas = np.zeros(len(array))
    for r in range(len(rings)):
        lon, lat = coords[starts[r] : starts[r + 1]].T
        area = abs(geod.polygon_area_perimeter(lon, lat)[0])
        areas[owner[part[r]]] += area if exterior[r] else -area
    return [float(a) for a in areas]


def _polygon(rings: list[list[tuple[float, float]]]) -> BaseGeometry:
    """A GeoJSON polygon's rings as a shapely polygon, built in C (no per-vertex Python)."""
    shell, *holes = (np.asarray(ring, dtype=np.float64) for ring in rings)
    return shapely.polygons(shell, holes=holes or None)


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
        return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=crs), crs=crs)
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
        geometry=geoms,
        crs=crs,
    )
    return frame.sort_values("score_max", ascending=False, ignore_index=True)
