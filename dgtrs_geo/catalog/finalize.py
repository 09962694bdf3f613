"""Consolidation: every verified part gathered into one memory-mappable search index, ANN on top.

Searching thousands of Parquet parts would open thousands of files per query, so ``finalize``
copies what search needs into one folder, written under a temporary name and made current by
rewriting ``CURRENT`` (a reader holding the previous folder keeps reading it)::

    index-<stamp>/
        manifest.json    format, model_id, dim, count, whether an ANN index was built, created
        scenes.parquet   one row per scene: its record (href, date, CRS, transform, GSD, window
                         sizes, fingerprint, part checksum) and its rows ``[row_start, row_stop)``
        embeddings.npy   float16 [N, D]  every window's embedding, scenes in scene-id order (half
                         the bytes to scan of float32; cosines within 1e-3; the parts keep float32)
        windows.npy      int32   [N, 4]  col_off, row_off, width, height in scene pixels
        bounds.npy       float64 [N, 4]  EPSG:4326 bounds (min_lon, min_lat, max_lon, max_lat)
        ann/             the nearest-neighbour index of ``ann.py``, which decides by the number
                         of rows between an exact scan and a FAISS IVF-PQ index

Every part is checked against its record's checksum on the way in; a part that fails is left out,
reported, and recorded as failed so the next ``catalog index`` embeds its scene again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from numpy.lib.format import open_memmap

from .sources import SceneFailure
from .store import CatalogStore, temp_name, write_atomic

__all__ = ["INDEX_FORMAT", "FinalizeSummary", "finalize"]

INDEX_FORMAT = "dgtrs-geo-catalog-index"

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]


@dataclass
class FinalizeSummary:
    """What :func:`finalize` consolidated.

    Attributes:
        index: the consolidated index folder.
        scenes: scenes included.
        rows: windows included.
        ann: the kind of nearest-neighbour index (``"ivfpq"``, ``"exact"``; ``None``: empty).
        corrupt: parts left out because they failed verification (re-indexed on the next run).
        failed: scenes whose last indexing failed.

    """

    index: Path
    scenes: int
    rows: int
    ann: str | None
    corrupt: list[SceneFailure] = field(default_factory=list)
    failed: list[SceneFailure] = field(default_factory=list)


def _part(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)


def _verified(
    store: CatalogStore,
) -> tuple[list[dict], list[SceneFailure], list[SceneFailure]]:
    ok, corrupt, failed = [], [], []
    for scene_id, record in store.records().items():
        if record.get("status") != "ok":
            failed.append(SceneFailure(record.get("href", scene_id), record["error"], scene_id))
            continue
        if (reason := store.verify(record)) is not None:
            message = f"{reason}: left out of search, indexed again by the next `catalog index`"
            store.write_failure(scene_id, record["href"], message)
            corrupt.append(SceneFailure(record["href"], message, scene_id))
            continue
        ok.append(record)
    return ok, corrupt, failed


def _part_arrays(
    store: CatalogStore, record: dict, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    columns = ["embedding", "col_off", "row_off", "width", "height", "bbox"]
    # ParquetFile.read, not read_table (the datasets API): a third of the time on small parts.
    with pq.ParquetFile(store.part_path(record["scene_id"])) as file:
        table = file.read(columns=columns, use_threads=False)
    n = table.num_rows
    embedding = table["embedding"].combine_chunks()
    if n != record["rows"] or (n and embedding.type.list_size != dim):
        raise ValueError(
            f"part of {record['scene_id']} holds {n} rows of {embedding.type.list_size}-d "
            f"embeddings; its record says {record['rows']} of {dim}-d"
        )
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).reshape(n, dim)
    windows = np.stack([table[c].to_numpy() for c in columns[1:5]], axis=1)
    bbox = table["bbox"].combine_chunks()
    bounds = np.stack([bbox.field(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")], 1)
    return vectors, windows, bounds


def _consolidate(
    store: CatalogStore, records: list[dict], folder: Path, progress: ProgressFn | None
) -> list[dict]:
    dim = int(store.meta["dim"])
    total = sum(int(r["rows"]) for r in records)
    embeddings = open_memmap(folder / "embeddings.npy", "w+", np.float16, (total, dim))
    windows = open_memmap(folder / "windows.npy", "w+", np.int32, (total, 4))
    bounds = open_memmap(folder / "bounds.npy", "w+", np.float64, (total, 4))
    start = 0
    scenes = []
    for i, record in enumerate(records):
        vectors, wins, boxes = _part_arrays(store, record, dim)
        stop = start + len(vectors)
        embeddings[start:stop], windows[start:stop], bounds[start:stop] = vectors, wins, boxes
        scenes.append({**record, "row_start": start, "row_stop": stop})
        start = stop
        if progress is not None:
            progress(0.8 * (i + 1) / len(records), f"gathered {i + 1}/{len(records)} parts")
    for array in (embeddings, windows, bounds):
        array.flush()
    del embeddings, windows, bounds
    return scenes


def _write_scenes(scenes: list[dict], path: Path) -> None:
    columns = {key: [s.get(key) for s in scenes] for key in scenes[0]} if scenes else {}
    if "bounds" in columns:
        columns["bounds"] = [b if b is not None else [np.nan] * 4 for b in columns["bounds"]]
    table = pa.table(columns) if scenes else pa.table({"scene_id": pa.array([], pa.string())})
    pq.write_table(table, path)


def _current_fits(store: CatalogStore, records: list[dict]) -> dict | None:
    """The current index's manifest, if it holds exactly these parts."""
    folder = store.current()
    if folder is None:
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        held = pq.read_table(folder / "scenes.parquet", columns=["scene_id", "sha256"])
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    wanted = {(r["scene_id"], r["sha256"]) for r in records}
    if set(zip(*(held[c].to_pylist() for c in ("scene_id", "sha256")), strict=True)) != wanted:
        return None
    return manifest


def _write_index(
    store: CatalogStore, records: list[dict], progress: ProgressFn | None
) -> tuple[str, dict]:
    """Write a new index folder from ``records``; return its name and manifest."""
    folder = temp_name(store.root / "index")
    folder.mkdir()
    try:
        scenes = _consolidate(store, records, folder, progress)
        rows = scenes[-1]["row_stop"] if scenes else 0
        kind = None
        if rows:
            from .ann import build_ann

            if progress is not None:
                progress(0.8, f"building the nearest-neighbour index over {rows} windows")
            embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
            build_ann(embeddings, folder / "ann", progress=_part(progress, 0.8, 0.99))
            kind = json.loads((folder / "ann" / "ann.json").read_text())["kind"]
        _write_scenes(scenes, folder / "scenes.parquet")
        manifest = {
            "format": INDEX_FORMAT,
            "version": 1,
            "model_id": store.model_id,
            "dim": int(store.meta["dim"]),
            "count": int(rows),
            "scenes": len(scenes),
            "ann": kind,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2).encode())
        name = f"index-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
        os.replace(folder, store.root / name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return name, manifest


def finalize(root: str | Path, *, progress: ProgressFn | None = None) -> FinalizeSummary:
    """Gather every verified part of a catalog into a new current search index.

    Run it once after all shards of an array job have finished (``catalog index`` without
    ``--shard`` runs it itself). It takes a lock on the catalog, so two runs do not race. When
    the current index already holds exactly the verified parts, it is kept as it is.

    Args:
        root: the catalog folder.
        progress: called with ``(fraction, message)``.

    Returns:
        What was included and what was left out.

    """
    store = CatalogStore.open(root)
    with FileLock(store.root / ".lock"):
        store.clean_temporaries()
        records, corrupt, failed = _verified(store)
        manifest = _current_fits(store, records)
        if manifest is None:
            name, manifest = _write_index(store, records, progress)
            store.set_current(name)
            # The previous index stays for searches that read CURRENT just before it changed.
            for old in sorted(store.root.glob("index-*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        folder = store.current()
    rows, scenes = manifest["count"], manifest["scenes"]
    if progress is not None:
        progress(1.0, f"catalog ready: {rows} windows of {scenes} scenes")
    assert folder is not None  # just written, or found current
    return FinalizeSummary(folder, scenes, rows, manifest["ann"], corrupt, failed)
