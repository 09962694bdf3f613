"""Searching a catalog: texts to the best windows across every scene, one per place.

A search embeds the texts (one forward), narrows the rows by date, bounding box and area of
interest (scene bounds first, then window bounds), and asks the nearest-neighbour index of
``ann.py`` for the best of the rows left (``AnnIndex.search(rows=...)``): FAISS with the other
rows masked out, or an exact matrix product over the memory-mapped embeddings when the catalog
is small or the filters leave few rows. Windows of one place (the two offset grids, nested
scales, several dates of the same ground) are then collapsed to the best one: a window is dropped
when its centre lies closer to a better window's centre than ``min_distance`` metres, by default
:data:`SAME_PLACE` of the larger window's side. Offset and nested windows lie at most 0.71 of a
side apart; neighbours on one grid lie a full side apart and stay, as distinct places.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from ..errors import EmbeddingIndexError, InputError, OutputError
from .finalize import INDEX_FORMAT
from .geometry import centres_distance_m, window_polygons_4326
from .sources import parse_date
from .store import CatalogStore, temp_name

__all__ = ["SearchIndex", "candidate_rows", "parse_interval", "search_rows", "write_results"]

#: Two windows whose centres are closer than this share of the larger one's side are one place.
SAME_PLACE = 0.75

#: Columns of a search result, in order (geometry last).
RESULT_COLUMNS = (
    "query",
    "rank",
    "score",
    "scene",
    "href",
    "date",
    "item_id",
    "col_off",
    "row_off",
    "width",
    "height",
    "size_m",
)


@dataclass
class SearchIndex:
    """A catalog's consolidated index (see ``finalize.py``), memory-mapped.

    Attributes:
        folder: the ``index-*`` folder.
        manifest: its ``manifest.json``.
        scenes: one row per scene (its record and ``row_start``, ``row_stop``).
        embeddings: float16 ``[N, D]`` (as ``finalize`` writes them), memory-mapped.
        windows: int32 ``[N, 4]``, memory-mapped.
        bounds: float64 ``[N, 4]`` EPSG:4326 bounds, memory-mapped.

    """

    folder: Path
    manifest: dict
    scenes: pd.DataFrame
    embeddings: np.ndarray
    windows: np.ndarray
    bounds: np.ndarray
    _ann: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, store: CatalogStore) -> SearchIndex:
        """Open the current index of a catalog.

        Raises:
            EmbeddingIndexError: if the catalog holds no windows or was never finalized.

        """
        folder = store.current()
        parts = list((store.root / "parts").glob("*.parquet"))
        if folder is None and not parts:
            raise EmbeddingIndexError(
                f"catalog {store.root} is empty: index scenes into it first "
                f"(`dgtrs-geo catalog index SOURCES... -o {store.root}`)"
            )
        if folder is None:
            raise EmbeddingIndexError(
                f"catalog {store.root} has {len(parts)} part(s) but no search index: run "
                f"`dgtrs-geo catalog finalize {store.root}`"
            )
        manifest = json.loads((folder / "manifest.json").read_text())
        if len(parts) != manifest["scenes"]:
            warnings.warn(
                f"catalog {store.root} has {len(parts)} part(s) but its search index covers "
                f"{manifest['scenes']}: run `dgtrs-geo catalog finalize {store.root}` to search "
                "them all",
                stacklevel=2,
            )
        if manifest.get("format") != INDEX_FORMAT or manifest.get("count", 0) == 0:
            raise EmbeddingIndexError(
                f"catalog {store.root} holds no windows: index scenes into it first "
                "(every scene so far failed, or had no valid pixels)"
            )
        return cls(
            folder=folder,
            manifest=manifest,
            scenes=pq.read_table(folder / "scenes.parquet").to_pandas(),
            embeddings=np.load(folder / "embeddings.npy", mmap_mode="r"),
            windows=np.load(folder / "windows.npy", mmap_mode="r"),
            bounds=np.load(folder / "bounds.npy", mmap_mode="r"),
        )

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def ann(self) -> Any:
        """The ANN index (loaded on first use), or ``None`` when the catalog has none."""
        if self._ann is None and self.manifest.get("ann"):
            from .ann import AnnIndex

            self._ann = AnnIndex.load(self.folder / "ann")
        return self._ann

    def scene_of(self, rows: np.ndarray) -> np.ndarray:
        """Return the position in :attr:`scenes` of each row's scene."""
        return np.searchsorted(self.scenes["row_start"].to_numpy(), rows, side="right") - 1

    def side_m(self, rows: np.ndarray) -> np.ndarray:
        """Return each row's window side on the ground, in metres."""
        gsd = self.scenes["gsd"].to_numpy()[self.scene_of(rows)]
        return np.asarray(self.windows[rows][:, 2:]).max(axis=1) * gsd


def parse_interval(text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Parse ``START/END`` (ISO 8601, either side open as ``..`` or empty) into UTC bounds.

    A date without a time covers its whole day: ``2024-01-01/2024-01-31`` ends at the end of
    the 31st. A single date is that day.

    Raises:
        InputError: if a side is not a date, or the interval ends before it starts.

    """
    start_text, _, end_text = text.partition("/") if "/" in text else (text, "", text)
    start = None if start_text.strip() in ("", "..") else parse_date(start_text, "--date")
    end = None if end_text.strip() in ("", "..") else parse_date(end_text, "--date")
    if end is not None and len(end_text.strip()) <= 10:
        end += dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    if start is not None and end is not None and end < start:
        raise InputError(f"--date {text!r} ends before it starts: give START/END")
    return start, end


def _bbox_4326(bbox: Sequence[float], bbox_crs: str) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in bbox)
    if len(values) != 4 or not all(map(math.isfinite, values)):
        raise InputError(f"--bbox must be four numbers minx,miny,maxx,maxy, got {list(bbox)}")
    minx, miny, maxx, maxy = values
    if minx >= maxx or miny >= maxy:
        raise InputError(f"--bbox {list(values)} must be minx,miny,maxx,maxy with min < max")
    try:
        crs = CRS.from_user_input(bbox_crs)
    except CRSError as error:
        raise InputError(f"--bbox-crs {bbox_crs!r} is not a CRS: {error}") from error
    if crs.is_geographic and (min(miny, maxy) < -90 or max(miny, maxy) > 90):
        raise InputError(
            f"--bbox {list(values)}: latitude {miny if abs(miny) > 90 else maxy} is outside "
            "-90..90; --bbox takes minx,miny,maxx,maxy, longitude first"
        )
    return transform_bounds(crs, "EPSG:4326", *values, densify_pts=21)


def _overlaps(bounds: np.ndarray, box: Sequence[float]) -> np.ndarray:
    return (
        (bounds[:, 0] <= box[2])
        & (bounds[:, 2] >= box[0])
        & (bounds[:, 1] <= box[3])
        & (bounds[:, 3] >= box[1])
    )


def _scene_bounds(index: SearchIndex) -> np.ndarray:
    return np.array(index.scenes["bounds"].tolist(), dtype=np.float64).reshape(-1, 4)


def _warn_outside(index: SearchIndex, box: Sequence[float], what: str) -> None:
    bounds = _scene_bounds(index)
    if _overlaps(bounds, box).any():
        return
    swapped = (box[1], box[0], box[3], box[2])
    hint = (
        " It would overlap some if its axes were swapped: give minx,miny,maxx,maxy, "
        "longitude first in EPSG:4326."
        if _overlaps(bounds, swapped).any()
        else ""
    )
    warnings.warn(
        f"{what} lies outside every scene of the catalog, which spans longitude "
        f"{np.nanmin(bounds[:, 0]):.6g}..{np.nanmax(bounds[:, 2]):.6g}, latitude "
        f"{np.nanmin(bounds[:, 1]):.6g}..{np.nanmax(bounds[:, 3]):.6g}: nothing is found there."
        f"{hint}",
        stacklevel=3,
    )


def _aoi_geometry(aoi: str | Path) -> shapely.Geometry:
    try:
        frame = gpd.read_file(aoi)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"cannot read the area-of-interest file {aoi}: {error}") from error
    if frame.empty:
        raise InputError(f"area-of-interest file {aoi} has no features")
    if frame.crs is None:
        raise InputError(f"area-of-interest file {aoi} has no CRS: assign one (e.g. in QGIS)")
    return shapely.union_all(frame.to_crs("EPSG:4326").geometry.to_numpy())


def _rows_of(index: SearchIndex, scenes: np.ndarray) -> np.ndarray:
    starts = index.scenes["row_start"].to_numpy()[scenes]
    stops = index.scenes["row_stop"].to_numpy()[scenes]
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(
        [np.arange(a, b, dtype=np.int64) for a, b in zip(starts, stops, strict=True)]
    )


def candidate_rows(
    index: SearchIndex,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: str = "EPSG:4326",
    aoi: str | Path | None = None,
    date: str | None = None,
) -> np.ndarray | None:
    """Return the rows that pass the filters (``None``: no filter, every row).

    Args:
        index: the catalog's search index.
        bbox: ``(minx, miny, maxx, maxy)`` in ``bbox_crs``; windows that touch it pass.
        bbox_crs: the CRS of ``bbox`` (default EPSG:4326, longitude first).
        aoi: a vector file; windows that intersect its features pass.
        date: ``START/END`` (see :func:`parse_interval`); scenes without a date do not pass.

    Raises:
        InputError: if a filter is malformed.

    """
    if bbox is None and aoi is None and date is None:
        return None
    keep = np.ones(len(index.scenes), dtype=bool)
    box = geometry = None
    if date is not None:
        start, end = parse_interval(date)
        dates = pd.to_datetime(index.scenes["date"], utc=True, format="ISO8601")
        keep &= dates.notna().to_numpy()
        if start is not None:
            keep &= (dates >= pd.Timestamp(start)).fillna(False).to_numpy()
        if end is not None:
            keep &= (dates <= pd.Timestamp(end)).fillna(False).to_numpy()
    if bbox is not None:
        box = _bbox_4326(bbox, bbox_crs)
        _warn_outside(index, box, f"--bbox {list(bbox)} ({bbox_crs})")
        keep &= _overlaps(_scene_bounds(index), box)
    if aoi is not None:
        geometry = _aoi_geometry(aoi)
        _warn_outside(index, geometry.bounds, f"--aoi {aoi}")
        keep &= _overlaps(_scene_bounds(index), geometry.bounds)
    rows = _rows_of(index, np.flatnonzero(keep))
    if box is not None:
        rows = rows[_overlaps(index.bounds[rows], box)]
    if geometry is not None:
        boxes = np.asarray(index.bounds[rows])
        rows = rows[shapely.intersects(geometry, shapely.box(*boxes.T))]
    return rows


def _nearest(
    index: SearchIndex, query: np.ndarray, k: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows for one query (``[1, D]``), among ``rows`` when given."""
    from .ann import exact_search

    ann = index.ann
    if ann is not None:
        # The ANN takes the filter itself: a few rows are scanned exactly, many are searched
        # with the others masked out (never an over-fetch that the filter then thins).
        scores, ids = ann.search(query, k, rows=rows)
    else:
        scores, ids = exact_search(index.embeddings, query, k, rows=rows)
    return scores[0], ids[0]


def _distinct(
    index: SearchIndex, ids: np.ndarray, top: int, min_distance: float | None
) -> np.ndarray:
    """Positions in ``ids`` (best first) of the best window of each place, at most ``top``."""
    boxes = np.asarray(index.bounds[ids])
    sides = index.side_m(ids)
    kept: list[int] = []
    for j in range(len(ids)):
        if kept:
            distance = centres_distance_m(boxes[kept], boxes[j])
            limit = (
                min_distance
                if min_distance is not None
                else SAME_PLACE * np.maximum(sides[kept], sides[j])
            )
            if (distance < limit).any():
                continue
        kept.append(j)
        if len(kept) == top:
            break
    return np.asarray(kept, dtype=np.int64)


def search_rows(
    index: SearchIndex,
    query: np.ndarray,
    top: int,
    rows: np.ndarray | None = None,
    min_distance: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the scores and rows of the ``top`` best distinct windows for one query.

    Candidates are fetched in growing numbers until ``top`` distinct places are found or the
    rows run out.

    Args:
        index: the catalog's search index.
        query: float32 ``[D]`` text embedding.
        top: results wanted.
        rows: the rows allowed (``None``: all).
        min_distance: metres between the centres of two results (``None``: :data:`SAME_PLACE`
            of the larger window's side).

    """
    available = len(index) if rows is None else len(rows)
    k = min(available, max(8 * top, top + 64))
    while k > 0:
        scores, ids = _nearest(index, query[None, :].astype(np.float32), k, rows)
        valid = ids >= 0
        scores, ids = scores[valid], ids[valid]
        kept = _distinct(index, ids, top, min_distance)
        if len(kept) == top or k >= available:
            return scores[kept], ids[kept]
        k = min(available, k * 4)
    return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)


def hits_frame(index: SearchIndex, query: str, scores: np.ndarray, rows: np.ndarray):
    """Return one query's hits as a GeoDataFrame in EPSG:4326 (see :data:`RESULT_COLUMNS`)."""
    positions = index.scene_of(rows)
    scenes = index.scenes.iloc[positions].reset_index(drop=True)
    windows = np.asarray(index.windows[rows]).reshape(-1, 4)
    geometry = np.empty(len(rows), dtype=object)
    for position in np.unique(positions):
        mine = positions == position
        record = index.scenes.iloc[position]
        geometry[mine] = window_polygons_4326(
            windows[mine], Affine(*record["transform"]), CRS.from_wkt(record["crs"])
        )[0]
    frame = pd.DataFrame(
        {
            "query": query,
            "rank": np.arange(1, len(rows) + 1),
            "score": scores.astype(np.float64),
            "scene": scenes["scene_id"],
            "href": scenes["href"],
            "date": pd.to_datetime(scenes["date"], utc=True, format="ISO8601"),
            "item_id": scenes["item_id"] if "item_id" in scenes else None,
            "col_off": windows[:, 0],
            "row_off": windows[:, 1],
            "width": windows[:, 2],
            "height": windows[:, 3],
            "size_m": index.side_m(rows),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=list(geometry), crs="EPSG:4326")


def write_results(frame: gpd.GeoDataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write search results as ``results.gpkg`` (layer ``results``) and ``results.parquet``.

    Each file is written under a temporary name and renamed, so a failed write leaves none.

    Raises:
        OutputError: if ``out_dir`` cannot be written, or a result file name is taken by a folder.

    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {out}: {error}") from error
    paths = {"gpkg": out / "results.gpkg", "parquet": out / "results.parquet"}
    written = []
    try:
        for kind, path in paths.items():
            if path.is_dir():
                raise OutputError(f"{path} is a folder: choose another -o/--out-dir")
            # GDAL picks the GeoPackage driver's rules from the extension: keep it last.
            tmp = Path(f"{temp_name(path)}{path.suffix}")
            if kind == "gpkg":
                frame.to_file(tmp, driver="GPKG", layer="results")
            else:
                frame.to_parquet(tmp)
            os.replace(tmp, path)
            written.append(path)
    except BaseException:
        for path in [*written, *(Path(f"{temp_name(p)}{p.suffix}") for p in paths.values())]:
            path.unlink(missing_ok=True)
        raise
    return paths
