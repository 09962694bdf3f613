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
from rasterio.warp import transform_geom
from scipy import ndimage
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

__all__ = ["heatmap_polygons", "polygon_areas"]

COLUMNS = ["query", "score_max", "score_mean", "area", "geometry"]


#: Edges are split into this many pieces per polygon extent before areas are measured, so an
#: edge straight in the map's CRS (a parallel in EPSG:4326, a line in Web Mercator) follows
#: geodesics closely: the relative area error falls with its square (under 1e-6 at 1 degree).
_DENSIFY = 64


def _geodesic_area(geom: BaseGeometry, geod: Geod) -> float:
    """Area of a (multi)polygon in lon/lat on the ellipsoid: exteriors minus holes."""
    total = 0.0
    for part in getattr(geom, "geoms", [geom]):
        total += abs(geod.polygon_area_perimeter(*part.exterior.xy)[0])
        total -= sum(abs(geod.polygon_area_perimeter(*ring.xy)[0]) for ring in part.interiors)
    return total


def polygon_areas(geoms: list[BaseGeometry], crs: CRS | None) -> list[float]:
    """Return each polygon's geodesic area in square metres, whatever the CRS.

    Polygons are densified, transformed to EPSG:4326 (cut at the antimeridian) and measured on
    the WGS 84 ellipsoid: a planar area in Web Mercator would be too large by the square of the
    scale factor (+23 % at 25 degrees latitude). Without a CRS, areas are in square pixels.

    Args:
        geoms: polygons or multipolygons in ``crs``.
        crs: their CRS.

    Returns:
        One area per geometry.

    """
    if crs is None:
        return [float(g.area) for g in geoms]
    dense = []
    for geom in geoms:
        minx, miny, maxx, maxy = geom.bounds
        dense.append(shapely.segmentize(geom, max(maxx - minx, maxy - miny) / _DENSIFY))
    lonlat = transform_geom(crs, "EPSG:4326", [mapping(g) for g in dense])
    geod = Geod(ellps="WGS84")
    return [_geodesic_area(shape(g), geod) for g in lonlat]


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
        rows.append((int(label), shape(geom)))
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
