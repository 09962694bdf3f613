"""Polygons around the parts of a heatmap above a threshold."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import shape

__all__ = ["heatmap_polygons"]

COLUMNS = ["query", "score_max", "score_mean", "area", "geometry"]


def _areas(geoms: list, crs: CRS | None) -> list[float]:
    """Areas in square metres (geodesic for geographic CRSs); square map units without a CRS."""
    if crs is not None and crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        return [abs(geod.geometry_area_perimeter(g)[0]) for g in geoms]
    factor = crs.linear_units_factor[1] if crs is not None and crs.linear_units else 1.0
    return [g.area * factor**2 for g in geoms]


def heatmap_polygons(
    heatmap: np.ndarray,
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
            "area": _areas(geoms, crs),
        },
        geometry=geoms,
        crs=crs,
    )
    return frame.sort_values("score_max", ascending=False, ignore_index=True)
