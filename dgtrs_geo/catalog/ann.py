"""Nearest-neighbour search over a catalog's window embeddings: FAISS IVF-PQ, re-ranked exactly.

A query (a text embedding) is compared with every stored window embedding by cosine similarity.
Below :data:`EXACT_BELOW` rows that is a plain matrix product over the memory-mapped rows
(:func:`exact_search`, also the reference the tests compare against). Above it,
:func:`build_ann` writes a FAISS ``IVF{nlist}_HNSW32,PQ{d/4}x4fsr`` index: an inverted file of
``nlist`` k-means cells (found through an HNSW graph of their centroids), each row stored as
4-bit product-quantised residuals (64 bytes at d=512) scanned with SIMD ("fast-scan"). A search
probes the ``nprobe`` nearest cells, takes the ``rerank`` best candidates by their codes and
re-scores them exactly from the memory-mapped rows: the scores returned are true cosines and only
the candidate list is approximate. The rows stay on disk; RAM holds the codes and ids (~75 bytes
a row).

Why FAISS: measured with ``benchmarks/catalog.py`` on 512-d clustered unit vectors (4,096
clusters in a cone, as image embeddings are) stored as float16, one query at a time, top 100, on
this project's shared 2-core AMD EPYC (load 2-6; CPU seconds are the steadier figure):

- FAISS 1.15 (this module). 10^5 rows: build 28 s, 9 MB, recall@100 0.964, 15 ms a query.
  10^6: build 119 s (87 CPU-s), 78 MB, recall 0.985, 66 ms median (30 ms CPU), 0.10 s cold.
  10^7: build 35 min (1,303 CPU-s, 1.1 GB peak private memory), 746 MB index (752 MB of RAM
  once loaded), recall 0.978, 49 ms median (33 ms CPU), p95 96 ms, 0.21 s cold.
- USearch 2.26 HNSW (i8, M=16, ef_construction 128), same 10^5 rows: build 78 s, 66 MB
  (660 bytes a row, all in RAM: 6.6 GB at 10^7), recall 0.84-0.87 (0.98 with the same exact
  re-rank of 1,000 candidates, 9 ms). At 10^6 its build took an hour here (FAISS: 2-9 minutes).
- LanceDB 0.40 IVF_PQ, same 10^5 rows: index 151 s, 213 MB (its own float32 copy of the rows,
  which the GeoParquet store already holds), recall 0.64-0.80 with ``refine_factor`` 10-40,
  21-67 ms. With float16 vectors its build over 10^5 rows had not finished after 20 minutes.

Index folder (``ann.json``, ``ann-*.faiss``, ``ann-*.npy``; other files are never touched):

- ``ann.json``: the manifest, replaced last and atomically, so a reader sees the old index or the
  new one, never a mix. Keys: ``format`` (``"dgtrs-geo-ann"``), ``version``, ``kind``
  (``"exact"`` or ``"ivfpq"``), ``rows``, ``dim``, ``factory``, ``nprobe``, ``rerank``,
  ``faiss`` (version that wrote it), ``files`` (name -> ``{"bytes", "sha256"}``) and
  ``embeddings``: where the rows are (``path`` relative to the folder, ``offset``, ``dtype``,
  ``shape``) and ``digest``, a SHA-256 of the shape, dtype and 65 sampled rows that detects an
  index left over from other embeddings without reading them all.
- ``ann-<token>.faiss``: the FAISS index (kind ``ivfpq``).
- ``ann-<token>.npy``: a copy of the rows, written only when :func:`build_ann` gets rows that are
  not a whole memory-mapped file.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

import faiss
import numpy as np

from dgtrs_geo.errors import EmbeddingIndexError, IndexMismatchError, InputError, OutputError

__all__ = ["EXACT_BELOW", "AnnIndex", "build_ann", "exact_search"]

FORMAT = "dgtrs-geo-ann"
VERSION = 1
MANIFEST = "ann.json"
#: Below this many rows the index is exact: a matrix product over them takes under about 0.1 s a
#: query here, less than an IVF index is worth (it also needs about 40 rows per k-means cell).
EXACT_BELOW = 50_000
#: Rows compared per block in exact search: bounds its memory to about 64 MiB whatever the size.
BLOCK_BYTES = 64 << 20
#: Candidates re-scored exactly per query (at least 4 x k). The 4-bit codes rank well enough
#: for 1,000 when a query's neighbours are close together (recall@100 0.98 at 10^6 rows) but
#: need 4,000 when they are spread out (10^5 rows, half the cells probed: 0.87 -> 0.96).
RERANK = 4000
#: Rows whose codes a search scans at least (see :func:`ivf_parameters`).
SCAN_ROWS = 50_000
#: Rows per k-means cell used to train the coarse quantizer (FAISS warns below 39).
TRAIN_PER_CELL = 40
#: Rows added to the FAISS index per call (bounds the float32 copy to ~128 MiB at d=512).
ADD_ROWS = 65536
#: Breadth of the HNSW search for the nearest cells (at least 2 x nprobe when searching).
HNSW_EF = 64
_SAMPLED_ROWS = 65

Progress = Callable[[float, str], None]


def exact_search(
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` rows of ``embeddings`` most similar to each query, by a full scan.

    The rows are read block by block (about 64 MiB at a time), so a memory map of any size is
    searched in bounded memory.

    Args:
        embeddings: ``[n, d]`` float16 or float32 rows, L2-normalised (a memory map is fine).
        queries: ``[q, d]`` or ``[d]`` query embeddings; they are L2-normalised here.
        k: how many rows to return per query.
        rows: restrict the search to these row ids (e.g. the windows inside a bbox or a date
            range); duplicates are ignored. ``None`` searches every row.

    Returns:
        ``(scores, rows)``, each ``[q, k]``: cosine similarities (float32) and row ids (int64),
        best first, ties broken by the smaller row id. When fewer than ``k`` rows are searched
        the tail is padded with row ``-1`` and score ``-inf``.

    Raises:
        InputError: bad shapes or dtypes, ``k < 1``, or row ids outside ``[0, n)``.
    """
    _check_embeddings(embeddings)
    queries = _as_queries(queries, embeddings.shape[1])
    k = _check_k(k)
    ids = None if rows is None else _check_rows(rows, len(embeddings))
    total = len(embeddings) if ids is None else len(ids)
    step = max(1, BLOCK_BYTES // (embeddings.shape[1] * 6 + len(queries) * 4))
    best = _empty(len(queries), k)
    for start in range(0, total, step):
        if ids is None:
            block_ids = np.arange(start, min(start + step, total), dtype=np.int64)
            block = embeddings[start : start + step]
        else:
            block_ids = ids[start : start + step]
            block = embeddings[block_ids]
        best = _merge(best, queries @ _as_float32(block).T, block_ids, k)
    return best


def build_ann(
    embeddings: np.ndarray,
    directory: Path,
    *,
    progress: Progress | None = None,
) -> None:
    """Build the nearest-neighbour index of ``embeddings`` into ``directory``.

    Below :data:`EXACT_BELOW` rows the index is exact (a manifest only); above, a FAISS IVF-PQ
    index is trained on a random sample and filled block by block, so RAM stays bounded by the
    compressed codes (about 75 bytes a row at d=512) plus the training sample and one block. The manifest is replaced last and
    atomically; files of earlier builds are removed after it.

    Args:
        embeddings: ``[n, d]`` float16 or float32 L2-normalised rows, ideally a memory map of a
            whole ``.npy`` file (e.g. ``np.load(path, mmap_mode="r")``): the index then refers to
            that file for its exact re-rank instead of keeping a copy. Keep the file where it is
            relative to ``directory`` (moving both together is fine).
        directory: the index folder (created if missing). ``ann.json``, ``ann-*.faiss`` and
            ``ann-*.npy`` in it belong to the index; nothing else there is touched.
        progress: called with (fraction done in [0, 1], stage) as the build advances.

    Raises:
        InputError: not a 2-D float16/float32 array, empty, non-finite or not unit-length rows.
        OutputError: ``directory`` cannot be written.
    """
    _check_embeddings(embeddings)
    report = progress or (lambda fraction, stage: None)
    directory = Path(directory)
    token = secrets.token_hex(6)
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        report(0.0, "checking embeddings")
        vectors, source = _embeddings_source(embeddings, directory, token, written)
        manifest = _base_manifest(vectors, source)
        if manifest["kind"] == "ivfpq":
            name = f"ann-{token}.faiss"
            written.append(directory / name)
            manifest.update(_build_ivfpq(vectors, directory / name, report))
        else:
            for start in range(0, len(vectors), ADD_ROWS):
                _checked_block(vectors, start, start + ADD_ROWS)
        manifest["files"] = {p.name: _file_record(p) for p in written}
        report(0.98, "writing")
        _write_json_atomic(directory / MANIFEST, manifest)
    except BaseException as error:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(f"Cannot write the nearest-neighbour index in {directory} ({error}): free disk space or choose a writable folder.") from error  # fmt: skip
        raise
    _remove_stale(directory, keep={MANIFEST, *manifest["files"]})
    report(1.0, "done")


@dataclass
class AnnIndex:
    """A loaded nearest-neighbour index; :meth:`load` it, then :meth:`search` it.

    ``nprobe`` (cells probed) and ``rerank`` (candidates re-scored exactly) may be changed on a
    loaded index to trade speed for recall; the defaults are the measured ones.
    """

    directory: Path
    kind: str
    embeddings: np.ndarray = field(repr=False)
    nprobe: int = 0
    rerank: int = RERANK
    faiss_index: faiss.Index | None = field(default=None, repr=False)
    mapping: mmap.mmap | None = field(default=None, repr=False)
    offset: int = field(default=0, repr=False)

    def __len__(self) -> int:
        return len(self.embeddings)

    @classmethod
    def load(cls, directory: Path) -> AnnIndex:
        """Open the index in ``directory``, verifying its files and that its rows still match.

        Raises:
            EmbeddingIndexError: no manifest, a manifest or FAISS file that is unreadable,
                truncated, changed (SHA-256) or from a newer format version, or rows missing.
            IndexMismatchError: the rows it refers to are not the ones it was built from.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        mapping, embeddings = _open_embeddings(directory, manifest)
        index = None
        if manifest["kind"] == "ivfpq":
            index = _read_faiss(directory, manifest)
        return cls(
            directory=directory,
            kind=manifest["kind"],
            embeddings=embeddings,
            nprobe=int(manifest.get("nprobe", 0)),
            rerank=int(manifest.get("rerank", RERANK)),
            faiss_index=index,
            mapping=mapping,
            offset=int(manifest["embeddings"]["offset"]),
        )

    def search(
        self, queries: np.ndarray, k: int, *, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` most similar rows for each query, best first.

        Args:
            queries: ``[q, d]`` (or ``[d]``) float32 query embeddings; L2-normalised here.
            k: how many rows per query.
            rows: restrict the search to these row ids (a bbox or date filter). Up to 1/16 of
                the index they are searched exactly (cheaper than scanning the codes of every
                cell); above, the ANN skips the other rows (a FAISS ID selector) and probes
                proportionally more cells, so as many candidates reach the re-rank.

        Returns:
            ``(scores, rows)`` as :func:`exact_search` returns them: exact cosines of the rows
            found (float32) and their ids (int64), padded with ``-inf`` / ``-1`` when the index
            (or ``rows``) holds fewer than ``k`` rows.
        """
        queries = _as_queries(queries, self.embeddings.shape[1])
        k = _check_k(k)
        ids = None if rows is None else _check_rows(rows, len(self))
        # Exact over m rows reads m x 1-2 KB; a filtered ANN probes all cells once m < n / 64
        # (nprobe = n / 64 cells, scaled by n / m) and reads n x 64 B of codes: more, up to n / 16.
        if self.faiss_index is None or (ids is not None and len(ids) * 16 <= len(self)):
            return exact_search(self.embeddings, queries, k, rows=ids)
        # The selector reads ``bitmap`` while FAISS searches: it must outlive the call.
        params, bitmap = _search_parameters(self.faiss_index, self.nprobe, ids)
        wanted = min(max(self.rerank, 4 * k), len(self) if ids is None else len(ids))
        _, candidates = self.faiss_index.search(queries, wanted, params=params)
        del bitmap
        results = []
        for query, found in zip(queries, candidates, strict=True):
            found = np.unique(found[found >= 0])
            self._prefetch(found)
            results.append(exact_search(self.embeddings, query, k, rows=found))
        return (
            np.concatenate([scores for scores, _ in results]),
            np.concatenate([found for _, found in results]),
        )

    def _prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel for these rows' pages all at once (``MADV_WILLNEED``).

        The re-rank then finds them in memory instead of faulting them in one by one: on a cold
        cache, 4,000 rows of a 1 GB file took 49 ms this way, 585 ms without (SSD-backed disk).
        """
        if self.mapping is None or not hasattr(self.mapping, "madvise") or not len(rows):
            return
        row_bytes = self.embeddings.shape[1] * self.embeddings.itemsize
        starts = self.offset + rows * row_bytes
        starts -= starts % mmap.PAGESIZE
        ends = self.offset + (rows + 1) * row_bytes
        # Rows are sorted: merge the page ranges that touch, one call per run.
        run_start, run_end = int(starts[0]), int(ends[0])
        for start, end in zip(starts[1:].tolist(), ends[1:].tolist(), strict=True):
            if start > run_end:
                self.mapping.madvise(mmap.MADV_WILLNEED, run_start, run_end - run_start)
                run_start = start
            run_end = end
        self.mapping.madvise(mmap.MADV_WILLNEED, run_start, run_end - run_start)


def _search_parameters(
    index: faiss.Index, nprobe: int, ids: np.ndarray | None
) -> tuple[Any, np.ndarray | None]:
    """FAISS search parameters, and the bitmap of the rows kept (``None``: all rows).

    With a subset, ``nprobe`` grows by the inverse of the share of rows kept, so as many
    candidates as without it come out of the cells probed.
    """
    selector = bitmap = None
    if ids is not None:
        nlist = faiss.extract_index_ivf(index).nlist
        nprobe = min(nlist, math.ceil(nprobe * index.ntotal / len(ids)))
        keep = np.zeros(index.ntotal, dtype=bool)
        keep[ids] = True
        bitmap = np.packbits(keep, bitorder="little")
        selector = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(bitmap))
    # faiss's __init__.pyi lacks SearchParametersHNSW, and its wrapper (which takes the fields
    # as keywords and keeps the quantizer's parameters alive) is typed as taking none.
    hnsw = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF, 2 * nprobe))  # type: ignore[attr-defined]
    params = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=hnsw, sel=selector)  # type: ignore[call-arg]
    return params, bitmap


def ivf_parameters(rows: int) -> tuple[int, int]:
    """Return ``(nlist, nprobe)`` for ``rows`` rows.

    ``nlist`` is the power of two nearest to 2 sqrt(rows), at most 65,536: half FAISS's
    4-16 sqrt(rows) guideline for flat cells, since 4-bit fast-scan codes make scanning bigger
    cells cheap while training cost grows with ``nlist`` squared. ``nprobe`` probes 1/64 of the
    cells, and at least enough to hold :data:`SCAN_ROWS` rows on average: when the neighbours of
    a query are spread over many cells (few rows, or a rare kind of place) that is what keeps
    the recall up, at a cost of about a millisecond.
    """
    nlist = 2 ** round(math.log2(2 * math.sqrt(rows)))
    # FAISS wants 39 training rows per cell; only small test indexes come near that.
    nlist = min(nlist, 65536, 2 ** int(math.log2(rows / 39)))
    nprobe = max(nlist // 64, math.ceil(SCAN_ROWS * nlist / rows))
    return nlist, min(nlist, nprobe)


def _build_ivfpq(vectors: np.ndarray, path: Path, report: Progress) -> dict:
    """Train and fill the FAISS index block by block; write it to ``path``."""
    rows, dim = vectors.shape
    nlist, nprobe = ivf_parameters(rows)
    # The coarse quantizer is an HNSW graph over the k-means centroids: assigning 10^7 rows
    # to 8,192 cells with a flat one is 8e13 flops, most of the build on a laptop.
    factory = f"IVF{nlist}_HNSW32,PQ{_pq_subquantizers(dim)}x4fsr"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    cast(faiss.IndexHNSW, quantizer).hnsw.efSearch = HNSW_EF  # "_HNSW32" in the factory
    sample = np.random.default_rng(0).choice(rows, min(rows, TRAIN_PER_CELL * nlist), False)
    report(0.02, f"training {factory} on {len(sample)} rows")
    index.train(_as_float32(vectors[np.sort(sample)]))
    for start in range(0, rows, ADD_ROWS):
        report(0.3 + 0.65 * start / rows, "adding rows")
        index.add(_checked_block(vectors, start, start + ADD_ROWS))
    report(0.95, "writing")
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as error:  # FAISS reports a failed fopen/fwrite so
        raise OSError(f"FAISS could not write {path}: {error}") from error
    _fsync(path)
    return {"factory": factory, "nlist": nlist, "nprobe": nprobe, "rerank": RERANK}


def _pq_subquantizers(dim: int) -> int:
    """Return an even divisor of ``dim`` near ``dim / 4`` (4 dims per 4-bit code)."""
    return max(m for m in range(2, max(2, dim // 4) + 1, 2) if dim % m == 0)


def _embeddings_source(
    embeddings: np.ndarray, directory: Path, token: str, written: list[Path]
) -> tuple[np.ndarray, dict]:
    """Describe where the re-rank reads the rows from, copying them when they are not a file."""
    if _is_whole_memmap(embeddings):
        path = Path(cast(str, embeddings.filename))  # not None: _is_whole_memmap checked it
        vectors = embeddings
    else:
        path = directory / f"ann-{token}.npy"
        written.append(path)
        copy = np.lib.format.open_memmap(path, "w+", embeddings.dtype, embeddings.shape)
        for start in range(0, len(embeddings), ADD_ROWS):
            copy[start : start + ADD_ROWS] = embeddings[start : start + ADD_ROWS]
        copy.flush()
        del copy
        _fsync(path)
        vectors = np.load(path, mmap_mode="r")
    source = {
        "path": os.path.relpath(path.resolve(), directory.resolve()),
        "offset": int(vectors.offset),
        "dtype": vectors.dtype.str,
        "shape": list(vectors.shape),
        "digest": _digest(vectors),
    }
    return vectors, source


def _is_whole_memmap(array: np.ndarray) -> TypeGuard[np.memmap[Any, Any]]:
    """True for a C-ordered memory map covering its file from ``offset`` to the end.

    A slice of a memory map keeps the parent's ``offset``, so the size test is what tells a
    whole map from a part of one.
    """
    if not isinstance(array, np.memmap) or array.filename is None:
        return False
    size = os.path.getsize(array.filename)
    return array.flags.c_contiguous and array.offset + array.nbytes == size


def _base_manifest(vectors: np.ndarray, source: dict) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "ivfpq" if len(vectors) >= EXACT_BELOW else "exact",
        "rows": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "faiss": faiss.__version__,
        "embeddings": source,
    }


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    fix = "rebuild it (build_ann, or `dgtrs-geo catalog finalize` for a catalog)"
    if not path.is_file():
        raise EmbeddingIndexError(f"No nearest-neighbour index in {directory} ({MANIFEST} is missing): {fix}.")  # fmt: skip
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind, version, fmt = manifest["kind"], manifest["version"], manifest["format"]
        manifest["rows"], manifest["dim"], manifest["embeddings"]["path"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EmbeddingIndexError(f"{path} is unreadable or incomplete ({error}): {fix}.") from error  # fmt: skip
    if fmt != FORMAT or kind not in ("exact", "ivfpq"):
        raise EmbeddingIndexError(f"{path} is not a dgtrs-geo nearest-neighbour index: {fix}.")
    if not isinstance(version, int) or version > VERSION:
        raise EmbeddingIndexError(
            f"{path} has format version {version}; this dgtrs-geo reads up to {VERSION}: "
            "upgrade dgtrs-geo, or rebuild the index with this one."
        )
    return manifest


def _open_embeddings(directory: Path, manifest: dict) -> tuple[mmap.mmap, np.ndarray]:
    source = manifest["embeddings"]
    path = directory / source["path"]
    shape = (int(manifest["rows"]), int(manifest["dim"]))
    fix = "rebuild the index from the current embeddings"
    try:
        dtype, offset = np.dtype(source["dtype"]), int(source["offset"])
        size = os.path.getsize(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise EmbeddingIndexError(f"The rows of the index in {directory} cannot be read from {path} ({error}): restore that file or {fix}.") from error  # fmt: skip
    if size != offset + shape[0] * shape[1] * dtype.itemsize:
        raise IndexMismatchError(f"{path} no longer holds the {shape[0]} x {shape[1]} rows the index in {directory} was built from: {fix}.")  # fmt: skip
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapping, "madvise"):
        # A re-rank reads ~1,000 scattered rows: without this each page fault also reads ahead
        # ~128 KiB around it, 100 times what is needed once the rows no longer fit in RAM.
        mapping.madvise(mmap.MADV_RANDOM)
    vectors = np.frombuffer(mapping, dtype, shape[0] * shape[1], offset).reshape(shape)
    if _digest(vectors) != source.get("digest"):
        raise IndexMismatchError(f"{path} changed since the index in {directory} was built: {fix}.")  # fmt: skip
    return mapping, vectors


def _read_faiss(directory: Path, manifest: dict) -> faiss.Index:
    fix = "rebuild it (build_ann, or `dgtrs-geo catalog finalize` for a catalog)"
    names = [name for name in manifest.get("files", {}) if name.endswith(".faiss")]
    if len(names) != 1:
        raise EmbeddingIndexError(f"{directory / MANIFEST} names no FAISS file: {fix}.")
    path = directory / names[0]
    if not path.is_file():
        raise EmbeddingIndexError(f"{path} is missing: {fix}.")
    if _file_record(path) != manifest["files"][names[0]]:
        raise EmbeddingIndexError(f"{path} is corrupt (its size or SHA-256 changed): {fix}.")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise EmbeddingIndexError(f"{path} cannot be read by FAISS {faiss.__version__} ({error}): {fix}.") from error  # fmt: skip
    if index.ntotal != manifest["rows"] or index.d != manifest["dim"]:
        raise EmbeddingIndexError(f"{path} holds {index.ntotal} x {index.d} rows, its manifest says {manifest['rows']} x {manifest['dim']}: {fix}.")  # fmt: skip
    return index


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Remove files of earlier or interrupted builds that the manifest does not name."""
    for pattern in ("ann-*.faiss", "ann-*.npy", f"{MANIFEST}.*.tmp"):
        for path in directory.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_record(path: Path) -> dict:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _digest(vectors: np.ndarray) -> str:
    """SHA-256 of shape, dtype and 65 evenly spaced rows (first and last included)."""
    picks = np.unique(np.linspace(0, len(vectors) - 1, _SAMPLED_ROWS).astype(np.int64))
    h = hashlib.sha256(f"{vectors.shape}{vectors.dtype.str}".encode())
    h.update(np.ascontiguousarray(vectors[picks]).tobytes())
    return h.hexdigest()


def _checked_block(vectors: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Return rows ``start:stop`` as float32, refusing non-finite or non-unit rows."""
    block = _as_float32(vectors[start:stop])
    norms = np.linalg.norm(block, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) < 1e-2))
    if len(bad):
        raise InputError(
            f"Embedding row {start + bad[0]} has norm {norms[bad[0]]:.4g}: the rows must be "
            "finite and L2-normalised (divide each by its norm before indexing)."
        )
    return block


def _check_embeddings(embeddings: np.ndarray) -> None:
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
        raise InputError("embeddings must be a 2-D NumPy array (rows x dimensions).")
    if embeddings.dtype not in (np.float16, np.float32):
        raise InputError(f"embeddings must be float16 or float32, not {embeddings.dtype}.")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise InputError(f"embeddings are empty (shape {embeddings.shape}).")


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InputError(f"queries must be [q, {dim}] to match the embeddings, not {queries.shape}.")  # fmt: skip
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms) & (norms > 0)):
        raise InputError("queries must be finite and non-zero.")
    return np.ascontiguousarray(queries / norms)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a positive integer, not {k!r}.")
    return int(k)


def _check_rows(rows: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(rows)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise InputError("rows must be a 1-D array of integer row ids.")
    ids = np.unique(ids.astype(np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= n):
        raise InputError(f"rows must lie in [0, {n}); got ids from {ids[0]} to {ids[-1]}.")
    return ids


def _as_float32(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block, dtype=np.float32)


def _empty(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.full((queries, k), -np.inf, dtype=np.float32),
        np.full((queries, k), -1, dtype=np.int64),
    )


def _merge(
    best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge a block's ``[q, m]`` scores (rows ``ids``) into the running top ``k``."""
    block_ids = np.broadcast_to(ids, scores.shape)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, 1).min(axis=1, keepdims=True)
        if np.count_nonzero(scores >= kth) > part.size:
            # A tie straddles the k-th place: argpartition picks among tied rows arbitrarily, a
            # full sort keeps the smaller row ids, so results do not depend on block sizes.
            part = np.lexsort((block_ids, -scores), axis=1)[:, :k]
        scores, block_ids = np.take_along_axis(scores, part, 1), np.take_along_axis(block_ids, part, 1)  # fmt: skip
    all_scores = np.concatenate([best[0], scores.astype(np.float32, copy=False)], axis=1)
    all_ids = np.concatenate([best[1], block_ids], axis=1)
    order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)
