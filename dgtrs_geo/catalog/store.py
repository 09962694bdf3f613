"""The catalog folder: one GeoParquet part per scene, each committed by a checksummed record.

Layout (format ``dgtrs-geo-catalog``, version 1)::

    NAME.dgtrs-catalog/
        catalog.json              format, version, model_id, model (name or path), dim, options
        parts/<scene_id>.parquet  the scene's windows: one GeoParquet 1.1 file per scene
        scenes/<scene_id>.json    the scene's record: status ("ok" or "failed"), fingerprint,
                                  rows, sha256 and size of the part, CRS, transform, size, GSD,
                                  window sizes in pixels, EPSG:4326 bounds; or the error
        CURRENT                   name of the consolidated search index (see ``finalize.py``)
        index-<stamp>/            that index: embeddings, windows and bounds of every part, ANN

A part is written to a temporary file and renamed; its record is written the same way after it.
The record is the commit: a part without a record (a run killed in between), or whose checksum
differs from its record's (a damaged file), is indexed again and never searched. Neither is
synced to disk: the checksum catches what a power cut could leave half written.
Temporary files are named ``.NAME~HOST~PID.tmp``, so a cleanup removes only those of dead
processes. Parallel writers (DDP ranks, array-job shards) each write their own scenes' files; no
file is shared but ``catalog.json``, which is created once and only read afterwards.

Columns of a part (one row per embedded window; DuckDB, pyarrow and geopandas read it as is):

=================  ===========================  =============================================
column             type                         meaning
=================  ===========================  =============================================
scene_id           string                       the scene's id
href               string                       the scene's local path or URL
item_id            string (null)                its STAC item id
date               timestamp[us, UTC] (null)    acquisition time
window_index       int32                        position of the window in the scene's plan
col_off, row_off   int32                        window origin in scene pixels
width, height      int32                        window size in scene pixels
scale              float64                      the window size asked for, in ``scale_unit``
size_m             float32                      the window's side on the ground, in metres
footprint_minx..   float64 (4 columns)          window bounds in the scene CRS
footprint_maxy
scene_crs          string                       the scene CRS (``EPSG:n`` or WKT)
bbox               struct<xmin, ymin, xmax,     bounds in EPSG:4326 (GeoParquet covering)
                   ymax: float64>
embedding          fixed_size_list<float32>[D]  L2-normalised image embedding
geometry           binary (WKB Polygon)         the window in EPSG:4326 (longitude, latitude)
=================  ===========================  =============================================
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS

from ..errors import EmbeddingIndexError, IndexMismatchError, InputError, OutputError
from ..localization.options import LocalizationOptions
from .geometry import window_bounds, window_polygons_4326
from .options import catalog_options, options_record
from .sources import Scene

__all__ = [
    "FORMAT",
    "VERSION",
    "CatalogStore",
    "ScenePart",
    "part_table",
    "temp_name",
    "write_atomic",
]

FORMAT = "dgtrs-geo-catalog"
VERSION = 1

#: Part columns worth dictionary encoding: one value repeated on every row of a part.
_DICTIONARY_COLUMNS = ["scene_id", "href", "item_id", "scene_crs"]

#: Temporary files of processes on other hosts are removed after this long.
STALE_TEMP_S = 24 * 3600


@dataclass
class ScenePart:
    """The windows of one scene, embedded: what a part file holds.

    Attributes:
        scene: the scene.
        fingerprint: the scene's fingerprint when it was read.
        crs: the scene CRS.
        transform: its geotransform.
        width: scene width in pixels.
        height: scene height in pixels.
        gsd: metres per pixel.
        scales_px: the window sizes planned, in pixels.
        plan_count: windows planned (embedded or not).
        window_index: int32 ``[n]`` positions in the plan of the embedded windows.
        windows: int64 ``[n, 4]`` the embedded windows.
        scales: float64 ``[n]`` each window's size as asked, in the catalog's ``scale_unit``.
        embeddings: float32 ``[n, D]``.

    """

    scene: Scene
    fingerprint: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    gsd: float
    scales_px: tuple[int, ...]
    plan_count: int
    window_index: np.ndarray
    windows: np.ndarray
    scales: np.ndarray
    embeddings: np.ndarray


def temp_name(path: Path) -> Path:
    """Return the temporary sibling a process writes ``path`` under (``.NAME~HOST~PID.tmp``)."""
    return path.with_name(f".{path.name}~{socket.gethostname()}~{os.getpid()}.tmp")


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Args:
        path: the file.
        data: its content.
        sync: flush the temporary file to disk before the rename. Parts and records skip it: a
            killed process loses nothing the kernel already holds, and what a power cut could
            damage (a part or record renamed before its blocks reached the disk) fails its
            checksum, or reads as no record, and is indexed again.

    """
    tmp = temp_name(path)
    try:
        with tmp.open("wb") as file:
            file.write(data)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


@lru_cache(maxsize=1)
def _wgs84_projjson() -> str:
    return json.dumps(ProjCRS.from_epsg(4326).to_json_dict())


def _geo_metadata(bounds: np.ndarray) -> dict:
    box = (
        [float(bounds[:, 0].min()), float(bounds[:, 1].min())]
        + [float(bounds[:, 2].max()), float(bounds[:, 3].max())]
        if len(bounds)
        else []
    )
    covering = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    column = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": json.loads(_wgs84_projjson()),
        "covering": covering,
    }
    if box:
        column["bbox"] = box
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def part_table(part: ScenePart) -> tuple[pa.Table, np.ndarray]:
    """Return a scene's GeoParquet table and its windows' EPSG:4326 bounds ``[n, 4]``."""
    n = len(part.windows)
    polygons, bounds = window_polygons_4326(part.windows, part.transform, part.crs)
    footprint = window_bounds(part.windows, part.transform)
    embeddings = np.ascontiguousarray(part.embeddings, dtype=np.float32)
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    date = part.scene.date
    columns = {
        "scene_id": pa.array([part.scene.scene_id] * n, pa.string()),
        "href": pa.array([part.scene.href] * n, pa.string()),
        "item_id": pa.array([part.scene.item_id] * n, pa.string()),
        "date": pa.array([date] * n, pa.timestamp("us", tz="UTC")),
        "window_index": pa.array(part.window_index, pa.int32()),
        "col_off": pa.array(part.windows[:, 0], pa.int32()),
        "row_off": pa.array(part.windows[:, 1], pa.int32()),
        "width": pa.array(part.windows[:, 2], pa.int32()),
        "height": pa.array(part.windows[:, 3], pa.int32()),
        "scale": pa.array(part.scales, pa.float64()),
        "size_m": pa.array(part.windows[:, 2:].max(axis=1) * part.gsd, pa.float32()),
        **{
            f"footprint_{k}": pa.array(footprint[:, i], pa.float64())
            for i, k in enumerate(("minx", "miny", "maxx", "maxy"))
        },
        "scene_crs": pa.array([_crs_name(part.crs)] * n, pa.string()),
        "bbox": pa.StructArray.from_arrays(
            [pa.array(bounds[:, i], pa.float64()) for i in range(4)],
            names=["xmin", "ymin", "xmax", "ymax"],
        ),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.ravel(), pa.float32()), dim
        ),
        "geometry": pa.array(shapely.to_wkb(polygons), pa.binary()),
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({"geo": json.dumps(_geo_metadata(bounds))}), bounds


class CatalogStore:
    """The files of one catalog folder (see the module docstring).

    Args:
        root: the ``NAME.dgtrs-catalog`` folder.
        meta: its ``catalog.json``.

    """

    def __init__(self, root: Path, meta: dict) -> None:
        self.root = root
        self.meta = meta

    @property
    def options(self) -> LocalizationOptions:
        """The catalog's window options (:data:`~dgtrs_geo.catalog.options.CATALOG_FIELDS`)."""
        return catalog_options(self.meta["options"])

    @property
    def model_id(self) -> str:
        """The model every embedding of the catalog comes from."""
        return self.meta["model_id"]

    def part_path(self, scene_id: str) -> Path:
        """Where the part of ``scene_id`` lives."""
        return self.root / "parts" / f"{scene_id}.parquet"

    def record_path(self, scene_id: str) -> Path:
        """Where the record of ``scene_id`` lives."""
        return self.root / "scenes" / f"{scene_id}.json"

    @classmethod
    def open(cls, root: str | Path) -> CatalogStore:
        """Open an existing catalog folder.

        Raises:
            InputError: if ``root`` is not a catalog folder.
            EmbeddingIndexError: if it is of a format version this dgtrs-geo does not read.

        """
        root = Path(root)
        path = root / "catalog.json"
        if not path.is_file():
            raise InputError(
                f"{root} is not a dgtrs-geo catalog (no catalog.json): build one with "
                "`dgtrs-geo catalog index SOURCES... -o NAME.dgtrs-catalog`"
            )
        try:
            meta = json.loads(path.read_text())
        except ValueError as error:
            raise EmbeddingIndexError(f"{path} is not valid JSON: {error}") from error
        if meta.get("format") != FORMAT:
            raise InputError(f"{root} is not a dgtrs-geo catalog ({path} has another format)")
        if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
            raise EmbeddingIndexError(
                f"{root} is a version-{meta.get('version')} catalog; this dgtrs-geo reads "
                f"version {VERSION} and older: upgrade dgtrs-geo (pip install -U dgtrs-geo)"
            )
        return cls(root, meta)

    @classmethod
    def create_or_open(
        cls,
        root: str | Path,
        *,
        model_id: str,
        model: str | None,
        dim: int,
        options: LocalizationOptions,
    ) -> CatalogStore:
        """Open ``root`` for indexing with this model and options, creating it if needed.

        Raises:
            IndexMismatchError: if the catalog exists with another model or other options.
            OutputError: if the folder cannot be created.

        """
        root = Path(root)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model_id": model_id,
            "model": model,
            "dim": int(dim),
            "options": options_record(options),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            for folder in (root / "parts", root / "scenes"):
                folder.mkdir(parents=True, exist_ok=True)
            tmp = temp_name(root / "catalog.json")
            tmp.write_text(json.dumps(meta, indent=2))
            try:
                # link() fails if the file exists: of parallel shards creating it, one wins.
                os.link(tmp, root / "catalog.json")
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create the catalog folder {root}: {error}") from error
        store = cls.open(root)
        store.check(model_id, options)
        return store

    def check(self, model_id: str, options: LocalizationOptions | None = None) -> None:
        """Raise :class:`IndexMismatchError` naming both sides if the model or options differ."""
        if self.model_id != model_id:
            raise IndexMismatchError(
                f"catalog {self.root} was built with model {self.model_id!r}, not {model_id!r}: "
                f"use --model {self.meta.get('model') or self.model_id}, or build another catalog"
            )
        if options is not None and options_record(options) != self.meta["options"]:
            raise IndexMismatchError(
                f"catalog {self.root} was built with options {self.meta['options']}, not "
                f"{options_record(options)}: index with the catalog's options or into a new folder"
            )

    def record(self, scene_id: str) -> dict | None:
        """Return the record of ``scene_id``, or ``None`` if it has none (or it is unreadable)."""
        try:
            record = json.loads(self.record_path(scene_id).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("scene_id") == scene_id else None

    def records(self) -> dict[str, dict]:
        """Return every scene record by scene id (unreadable records count as absent)."""
        found = (self.record(p.stem) for p in sorted((self.root / "scenes").glob("*.json")))
        return {r["scene_id"]: r for r in found if r is not None}

    def write_part(self, part: ScenePart) -> dict:
        """Write a scene's part, then its record; return the record."""
        table, bounds = part_table(part)
        sink = io.BytesIO()
        # Dictionaries only for the repeated strings: on floats they cost time and bytes.
        pq.write_table(table, sink, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS)
        data = sink.getvalue()
        path = self.part_path(part.scene.scene_id)
        write_atomic(path, data, sync=False)
        scene = part.scene
        record = {
            "scene_id": scene.scene_id,
            "href": scene.href,
            "item_id": scene.item_id,
            "date": scene.date.isoformat() if scene.date else None,
            "status": "ok",
            "fingerprint": part.fingerprint,
            "rows": int(len(part.windows)),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "crs": part.crs.to_wkt(),
            "transform": list(part.transform)[:6],
            "width": int(part.width),
            "height": int(part.height),
            "gsd": float(part.gsd),
            "scales_px": [int(s) for s in part.scales_px],
            "plan_count": int(part.plan_count),
            "bounds": _union(bounds),
            "indexed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        record_bytes = json.dumps(record, indent=1).encode()
        write_atomic(self.record_path(scene.scene_id), record_bytes, sync=False)
        return record

    def write_failure(self, scene_id: str, href: str, error: str) -> dict:
        """Record that a scene failed (its old part, if any, is removed: never searched)."""
        record = {
            "scene_id": scene_id,
            "href": href,
            "status": "failed",
            "error": error,
            "indexed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self.record_path(scene_id), json.dumps(record, indent=1).encode())
        self.part_path(scene_id).unlink(missing_ok=True)
        return record

    def drop(self, scene_id: str) -> None:
        """Remove a scene from the catalog: its part, then its record (the commit)."""
        self.part_path(scene_id).unlink(missing_ok=True)
        self.record_path(scene_id).unlink(missing_ok=True)

    def verify(self, record: dict, *, full: bool = True) -> str | None:
        """Return why a scene's part cannot be trusted, or ``None`` if it can.

        Args:
            record: an ``ok`` record.
            full: hash the whole part (else compare its size only).

        """
        path = self.part_path(record["scene_id"])
        if not path.is_file():
            return f"its part {path.name} is missing"
        if path.stat().st_size != record.get("bytes"):
            return (
                f"its part {path.name} has {path.stat().st_size} bytes, not {record.get('bytes')}"
            )
        if full:
            digest = hashlib.sha256()
            with path.open("rb") as file:
                while chunk := file.read(1 << 22):
                    digest.update(chunk)
            if digest.hexdigest() != record.get("sha256"):
                return f"its part {path.name} fails its checksum (the file was changed or damaged)"
        return None

    def clean_temporaries(self) -> list[Path]:
        """Remove temporary files and folders of processes that are gone; return them."""
        host = socket.gethostname()
        removed = []
        for path in [*self.root.glob(".*.tmp"), *self.root.glob("*/.*.tmp")]:
            _, writer_host, writer_pid = path.name[1:-4].rsplit("~", 2)
            mine = writer_host == host and writer_pid.isdigit()
            if (mine and not _alive(int(writer_pid))) or (
                not mine and time.time() - path.stat().st_mtime > STALE_TEMP_S
            ):
                _remove(path)
                removed.append(path)
        return removed

    def current(self) -> Path | None:
        """The consolidated search index named by ``CURRENT``, if any."""
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if path.is_dir() else None

    def set_current(self, name: str) -> None:
        """Point ``CURRENT`` at the consolidated index folder ``name``."""
        write_atomic(self.root / "CURRENT", f"{name}\n".encode())


def _union(bounds: np.ndarray) -> list[float] | None:
    if not len(bounds):
        return None
    return [
        float(bounds[:, 0].min()),
        float(bounds[:, 1].min()),
        float(bounds[:, 2].max()),
        float(bounds[:, 3].max()),
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
