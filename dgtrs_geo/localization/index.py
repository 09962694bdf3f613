"""The embedding index: the expensive half of localization, stored for every later query.

Format (a directory, version 2), readable with numpy and json alone::

    <name>.dgtrs-index/
        index.json        format, version, key, model_id, raster fingerprint and description
                          (path, size, CRS as WKT, geotransform, bands, stretch, nodata), the plan
                          (scales, region, reference or fast preprocessing, min_valid), count, dim,
                          created, and ``checksums``: the XXH3-128 digest of every array file
        windows.npy       int64 [N, 4]   col_off, row_off, width, height in raster pixels
        footprints.npy    float64 [N, 4] minx, miny, maxx, maxy in the raster's CRS
        embeddings.npy    float32 [N, D] L2-normalised image embeddings
        valid.npy         bool [rows, cols] validity (not nodata) of the default heatmap grid, whose
                          cell side in pixels is ``valid_cell`` in index.json; only for rasters
                          with nodata, so queries need not read the raster's mask again

Only windows that were embedded are listed (mostly-nodata windows are skipped).

Trust: :meth:`EmbeddingIndex.load` checks every array file against its checksum, the shapes
against ``count`` and ``dim``, that embeddings and footprints are finite, that windows lie inside
the raster and that footprints follow from windows and geotransform; anything else raises
:class:`~dgtrs_geo.errors.EmbeddingIndexError` with the reason. :func:`open_or_build` also checks
the index fits the model, the raster's content fingerprint and the plan, and rebuilds (with an
:class:`IndexRebuildWarning` saying why) what does not.

Writers hold a file lock, ``<name>.dgtrs-index.lock`` beside the index, around load-verify, build
and replace. An index is written into ``.<name>.dgtrs-index.tmp-*`` beside its final place and
renamed; an old one is first renamed to ``.<name>.dgtrs-index.old-*`` and removed after, so a
reader never sees a half index. Such hidden folders left by a killed process are removed by the
next writer in that folder, once their lock is free.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from affine import Affine
from filelock import FileLock, Timeout

from ..cache import cache_dir
from ..errors import EmbeddingIndexError, IndexMismatchError, OutputError
from .fingerprint import content_digest, prune_digest_cache, raster_fingerprint
from .heatmap import grid_shape

__all__ = [
    "EmbeddingIndex",
    "IndexRebuildWarning",
    "default_index_dir",
    "index_key",
    "list_indexes",
    "open_or_build",
    "prune_indexes",
    "try_open",
]

FORMAT = "dgtrs-geo-embedding-index"
VERSION = 2
SUFFIX = ".dgtrs-index"
_CHECKSUM = "xxh3-128"
_REQUIRED = ("windows.npy", "footprints.npy", "embeddings.npy")
#: Hidden folders of unfinished writes: ``.<name>.dgtrs-index.tmp-*`` and ``.old-*`` (and the
#: ``.<name>.dgtrs-index.<random>`` of version 1).
_PARTIAL = re.compile(r"^\.(?P<name>.+\.dgtrs-index)\.(?:tmp-|old-)?[A-Za-z0-9_]+$")

log = logging.getLogger(__name__)


class IndexRebuildWarning(UserWarning):
    """An existing embedding index was stale or corrupt and is being rebuilt; says why."""


def default_index_dir(raster: str | Path) -> Path:
    """Return where indexes of ``raster`` live by default.

    ``cache_dir("indexes")`` when ``$DGTRS_GEO_CACHE`` is set (a user who names a cache wants
    everything there), else a ``.dgtrs-index`` folder next to the raster when that folder can be
    written, else ``cache_dir("indexes")``.
    """
    if os.environ.get("DGTRS_GEO_CACHE"):
        return cache_dir("indexes")
    beside = Path(raster).resolve().parent / ".dgtrs-index"
    if os.access(beside if beside.exists() else beside.parent, os.W_OK):
        return beside
    return cache_dir("indexes")


def index_key(model_id: str, fingerprint: str, raster: dict[str, Any], plan: dict[str, Any]) -> str:
    """Return the hash that names an index: it changes with the model, raster pixels or plan."""
    payload = json.dumps(
        {"model_id": model_id, "fingerprint": fingerprint, "raster": raster, "plan": plan},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def footprints(windows: np.ndarray[Any, Any], transform: Affine) -> np.ndarray[Any, Any]:
    """Return ``[N, 4]`` map bounds ``(minx, miny, maxx, maxy)`` of pixel windows."""
    w = np.asarray(windows, dtype=np.float64)
    corners_x = np.stack([w[:, 0], w[:, 0] + w[:, 2], w[:, 0], w[:, 0] + w[:, 2]], axis=1)
    corners_y = np.stack([w[:, 1], w[:, 1], w[:, 1] + w[:, 3], w[:, 1] + w[:, 3]], axis=1)
    a, b, c, d, e, f = list(transform)[:6]
    xs = a * corners_x + b * corners_y + c
    ys = d * corners_x + e * corners_y + f
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


class _Unusable(Exception):
    """Why an index on disk cannot be used (internal; callers see EmbeddingIndexError)."""


def _checksum_file(file: Path) -> str:
    return f"{_CHECKSUM}:{content_digest(file)}"


def _read_npy(file: Path, checksum: str) -> np.ndarray[Any, Any]:
    """Read one ``.npy`` file whose bytes must match ``checksum``; the array views those bytes.

    Reading the bytes once, then checking and parsing that same buffer, means a file replaced
    between check and parse cannot slip through.
    """
    with file.open("rb") as handle:
        data = bytearray(os.fstat(handle.fileno()).st_size)
        if handle.readinto(data) != len(data):
            raise _Unusable(f"{file.name} changed while it was read")
    if f"{_CHECKSUM}:{xxhash.xxh3_128(data).hexdigest()}" != checksum:
        raise _Unusable(f"{file.name} does not match its checksum in index.json")
    head = io.BytesIO(bytes(data[: 1 << 16]))
    try:
        major, _ = np.lib.format.read_magic(head)  # type: ignore[no-untyped-call]
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)  # type: ignore[no-untyped-call]
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise _Unusable(f"{file.name} is not a numpy array file ({error})") from None
    count = math.prod(shape)
    if dtype.hasobject or len(data) - head.tell() != count * dtype.itemsize:
        raise _Unusable(f"{file.name} is truncated or holds objects")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=head.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def _verify(meta: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any] | None]) -> None:
    """Raise :class:`_Unusable` if the arrays do not make the index that ``meta`` describes."""
    windows, boxes, embeddings = arrays["windows"], arrays["footprints"], arrays["embeddings"]
    count, dim = meta["count"], meta["dim"]
    if windows is None or windows.shape != (count, 4) or count < 1:
        raise _Unusable(f"windows.npy does not hold {count} windows (count in index.json)")
    if windows.dtype.kind not in "iu":
        raise _Unusable("windows.npy does not hold integer pixel windows")
    if embeddings is None or embeddings.shape != (count, dim) or dim < 1:
        raise _Unusable(f"embeddings.npy is not {count} x {dim} (count and dim in index.json)")
    if embeddings.dtype != np.float32 or not np.isfinite(embeddings).all():
        raise _Unusable("the embeddings hold non-finite values (NaN or inf)")
    width, height = meta["raster"]["width"], meta["raster"]["height"]
    col, row, w, h = (windows[:, i] for i in range(4))
    if ((w < 1) | (h < 1) | (col < 0) | (row < 0) | (col + w > width) | (row + h > height)).any():
        raise _Unusable(f"windows.npy holds windows outside the {width} x {height} raster")
    expected = footprints(windows, Affine(*meta["raster"]["transform"]))
    if boxes is None or boxes.shape != expected.shape or not np.allclose(boxes, expected):
        raise _Unusable("footprints.npy does not match the windows and geotransform")
    if meta.get("valid_cell") is not None:
        shape = grid_shape(tuple(meta["plan"]["region"]), int(meta["valid_cell"]))
        valid = arrays.get("valid")
        if valid is None or valid.dtype != bool or valid.shape != shape:
            raise _Unusable(f"valid.npy is not a {shape[0]} x {shape[1]} mask")


def _read(path: Path) -> EmbeddingIndex:
    """Read and verify the index at ``path``; raise :class:`_Unusable` with the reason."""
    try:
        meta = json.loads((path / "index.json").read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise _Unusable(
                f"it is not a version-{VERSION} dgtrs-geo embedding index "
                f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
            )
        checksums = meta["checksums"]
        names = set(_REQUIRED) | ({"valid.npy"} if meta.get("valid_cell") is not None else set())
        if set(checksums) != names:
            raise _Unusable(
                f"index.json lists checksums of {sorted(checksums)}, not {sorted(names)}"
            )
        arrays = {name[:-4]: _read_npy(path / name, checksums[name]) for name in sorted(names)}
        _verify(meta, {"valid": None, **arrays})
    except FileNotFoundError as error:
        raise _Unusable(f"{Path(error.filename or 'index.json').name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _Unusable(f"it cannot be read ({error!r})") from None
    return EmbeddingIndex(
        meta=meta,
        windows=arrays["windows"],
        footprints=arrays["footprints"],
        embeddings=arrays["embeddings"],
        valid=arrays.get("valid"),
        path=path,
    )


@dataclass
class EmbeddingIndex:
    """Window embeddings of one raster under one model and plan.

    Attributes:
        meta: the ``index.json`` contents.
        windows: int64 ``[N, 4]`` pixel windows.
        footprints: float64 ``[N, 4]`` map bounds.
        embeddings: float32 ``[N, D]``.
        valid: bool validity of the default heatmap grid (``meta["valid_cell"]`` px cells), or
            ``None`` when every pixel is valid.
        path: the index directory, once saved or loaded.

    """

    meta: dict[str, Any]
    windows: np.ndarray[Any, Any]
    footprints: np.ndarray[Any, Any]
    embeddings: np.ndarray[Any, Any]
    valid: np.ndarray[Any, Any] | None = None
    path: Path | None = None

    @property
    def model_id(self) -> str:
        """The model the embeddings come from."""
        return str(self.meta["model_id"])

    @property
    def transform(self) -> Affine:
        """The raster's geotransform."""
        return Affine(*self.meta["raster"]["transform"])

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def create(
        cls,
        *,
        model_id: str,
        fingerprint: str,
        raster: dict[str, Any],
        plan: dict[str, Any],
        windows: np.ndarray[Any, Any],
        embeddings: np.ndarray[Any, Any],
        valid: np.ndarray[Any, Any] | None = None,
        valid_cell: int | None = None,
    ) -> EmbeddingIndex:
        """Assemble an index from a build's parts (see the module docstring for the fields)."""
        transform = Affine(*raster["transform"])
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "key": index_key(model_id, fingerprint, raster, plan),
            "model_id": model_id,
            "fingerprint": fingerprint,
            "raster": raster,
            "plan": plan,
            "count": int(len(windows)),
            "dim": int(embeddings.shape[1]) if embeddings.ndim == 2 else 0,
            "valid_cell": valid_cell if valid is not None else None,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        return cls(
            meta=meta,
            windows=np.asarray(windows, dtype=np.int64),
            footprints=footprints(windows, transform),
            embeddings=np.asarray(embeddings, dtype=np.float32),
            valid=None if valid is None else np.asarray(valid, dtype=bool),
        )

    def subset(self, region: tuple[int, int, int, int], plan: dict[str, Any]) -> EmbeddingIndex:
        """Return the windows that overlap ``region`` as an in-memory index for that plan.

        Args:
            region: ``(col_off, row_off, width, height)`` in pixels.
            plan: the plan parameters of the region (stored as this subset's ``plan``).

        Returns:
            An unsaved index (``path`` None) whose ``meta["subset_of"]`` names this one.
        """
        col, row, width, height = region
        w = self.windows
        overlaps = (
            (w[:, 0] < col + width)
            & (w[:, 0] + w[:, 2] > col)
            & (w[:, 1] < row + height)
            & (w[:, 1] + w[:, 3] > row)
        )
        meta = {
            **self.meta,
            "plan": plan,
            "count": int(overlaps.sum()),
            "valid_cell": None,
            "subset_of": str(self.path) if self.path else self.meta["key"],
        }
        return EmbeddingIndex(
            meta=meta,
            windows=w[overlaps],
            footprints=self.footprints[overlaps],
            embeddings=self.embeddings[overlaps],
        )

    def _arrays(self) -> dict[str, np.ndarray[Any, Any] | None]:
        return {
            "windows": self.windows,
            "footprints": self.footprints,
            "embeddings": self.embeddings,
            "valid": self.valid,
        }

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically under its lock, replacing any index there.

        Raises:
            EmbeddingIndexError: if the index is not sound (e.g. non-finite embeddings).
            OutputError: if the folder cannot be written.

        """
        path = Path(path)
        with _locked(path):
            self._write(path)
        return path

    def _write(self, path: Path) -> None:
        """Write into a temporary sibling, then swap it in; the caller holds the lock.

        Nothing is synced to disk: a power cut that leaves a file short or empty fails its
        checksum on the next load, and the index is rebuilt.
        """
        try:
            _verify(self.meta, self._arrays())
        except _Unusable as error:
            raise EmbeddingIndexError(
                f"refusing to write embedding index {path}: {error}; if the model's weights hold "
                "NaN or inf, use another checkpoint"
            ) from None
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            checksums = {}
            for name, array in self._arrays().items():
                if array is not None:
                    np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                    checksums[f"{name}.npy"] = _checksum_file(tmp / f"{name}.npy")
            meta = {**self.meta, "checksums": checksums}
            (tmp / "index.json").write_text(json.dumps(meta, indent=2))
            _swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.meta, self.path = meta, path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        """Read and verify an index directory (see the module docstring for what is checked).

        Raises:
            EmbeddingIndexError: if there is no index at ``path``, or it is of another format or
                version, truncated, corrupt, or holds non-finite values or windows outside the
                raster; the message names the path and the reason.

        """
        path = Path(path)
        try:
            return _read(path)
        except _Unusable as error:
            raise EmbeddingIndexError(
                f"embedding index {path} cannot be used: {error}. Rebuild it "
                "(`dgtrs-geo index RASTER --rebuild`) or remove it"
            ) from None

    def mismatches(
        self, model_id: str, fingerprint: str, raster: dict[str, Any], plan: dict[str, Any]
    ) -> list[str]:
        """Return what differs between this index and the model, raster and plan given.

        Args:
            model_id: the model that will embed the queries.
            fingerprint: the raster's current fingerprint.
            raster: the raster description (bands, stretch, size, CRS, transform, nodata).
            plan: the plan parameters.

        Returns:
            One phrase per difference; empty when the index fits.

        """
        problems = []
        if self.meta["model_id"] != model_id:
            problems.append(f"it was built with model {self.meta['model_id']!r}, not {model_id!r}")
        if self.meta["fingerprint"] != fingerprint:
            problems.append("the raster's pixels changed since it was built")
        stored = {k: v for k, v in self.meta["raster"].items() if k != "path"}
        if stored != {k: v for k, v in raster.items() if k != "path"}:
            problems.append("the raster's size, georeferencing, nodata, bands or stretch differ")
        if self.meta["plan"] != plan:
            problems.append(f"its window plan {self.meta['plan']} differs from {plan}")
        return problems

    def check(
        self, model_id: str, fingerprint: str, raster: dict[str, Any], plan: dict[str, Any]
    ) -> None:
        """Raise :class:`IndexMismatchError` naming what differs if this index does not fit.

        Args:
            model_id: the model that will embed the queries.
            fingerprint: the raster's current fingerprint.
            raster: the raster description (bands, stretch, size, CRS, transform, nodata).
            plan: the plan parameters.

        """
        if problems := self.mismatches(model_id, fingerprint, raster, plan):
            where = f" at {self.path}" if self.path else ""
            raise IndexMismatchError(
                f"embedding index{where} does not fit: " + "; ".join(problems) + ". Rebuild it "
                "(`dgtrs-geo index RASTER --model ...`) or let localize use its cache directory."
            )


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an old index is renamed away first and removed after.

    Renaming the old directory instead of deleting it in place means a reader holding its
    files keeps reading a whole index, and ``path`` is never a half-deleted directory.
    """
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "index")
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the index's file lock, creating its folder; an unwritable folder is an OutputError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(_lock_path(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process writing embedding index %s", path)
            lock.acquire()
    except OSError as error:
        raise OutputError(
            f"cannot write embedding indexes to {path.parent}: {error.strerror or error}. "
            "Choose a writable folder (--index-dir) or free space there"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _try_lock(path: Path) -> FileLock | None:
    """Return the held lock of index ``path`` if no process holds it now, else ``None``."""
    lock = FileLock(_lock_path(path))
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError, RuntimeError):
        return None
    return lock


def _delete_folder(folder: Path) -> bool:
    """Delete ``folder`` as far as permissions allow; return whether it is gone.

    A folder that may not be deleted stays, and callers do not report it as removed.
    """
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _remove_partials(directory: Path, held: Path | None = None) -> list[Path]:
    """Remove hidden folders of unfinished writes whose index lock is free (or ``held`` by us)."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if not match or not entry.is_dir():
            continue
        index_path = directory / match["name"]
        lock = None if index_path == held else _try_lock(index_path)
        if index_path != held and lock is None:
            continue  # a live writer owns it
        try:
            if _delete_folder(entry):
                removed.append(entry)
        finally:
            if lock is not None:
                lock.release()
    return removed


def _fitting(path: Path, expected: dict[str, Any]) -> EmbeddingIndex:
    """Read, verify and check the index at ``path``; raise :class:`_Unusable` with the reason."""
    index = _read(path)
    if problems := index.mismatches(**expected):
        raise _Unusable("it does not fit: " + "; ".join(problems))
    try:
        os.utime(path)  # the folder's mtime records the last use (list and prune read it)
    except OSError:
        pass  # a read-only index is still usable
    return index


def try_open(path: str | Path, expected: dict[str, Any]) -> EmbeddingIndex | None:
    """Return the index at ``path`` if it exists, verifies and fits ``expected``; else ``None``.

    No lock is taken: checksums bind the arrays to their ``index.json``, so an index replaced
    while it is read fails verification instead of mixing two builds.

    Args:
        path: the index directory.
        expected: ``model_id``, ``fingerprint``, ``raster`` and ``plan`` (the arguments of
            :meth:`EmbeddingIndex.check`).

    """
    path = Path(path)
    if not (path / "index.json").exists():
        return None
    try:
        return _fitting(path, expected)
    except _Unusable:
        return None


def open_or_build(
    path: Path,
    expected: dict[str, Any],
    build: Callable[[], EmbeddingIndex],
    *,
    rebuild: bool = False,
    allow_rebuild: bool = True,
) -> EmbeddingIndex:
    """Return the verified index at ``path``, building (or rebuilding) it under a file lock.

    A sound, fitting index is read without waiting for anyone. Otherwise the index's lock is
    taken (waiting while another process builds the same index, then using its result), the
    index is checked again, and if it is absent, stale or corrupt ``build()`` runs and its result
    is written atomically. Replacing an unusable index warns (:class:`IndexRebuildWarning`) with
    the reason. Leftovers of killed writers in the folder are removed.

    Args:
        path: the index directory (``<name>.dgtrs-index``).
        expected: ``model_id``, ``fingerprint``, ``raster`` and ``plan`` the index must have
            (the arguments of :meth:`EmbeddingIndex.check`).
        build: encodes the raster and returns the new, unsaved index.
        rebuild: build even if a sound index exists.
        allow_rebuild: when False, a stale or corrupt index raises instead of being replaced
            (an absent one is still built).

    Returns:
        The index, with ``path`` set.

    Raises:
        EmbeddingIndexError: if the index is stale or corrupt and ``allow_rebuild`` is False, or
            the new index is not sound (non-finite embeddings).
        OutputError: if the folder cannot be written.

    """
    path = Path(path)
    if not rebuild and (index := try_open(path, expected)) is not None:
        return index
    with _locked(path):
        _remove_partials(path.parent, held=path)
        if not rebuild and path.exists():
            try:
                return _fitting(path, expected)
            except _Unusable as error:
                reason = str(error)
            if not allow_rebuild:
                raise EmbeddingIndexError(
                    f"embedding index {path} cannot be used: {reason}. Rebuilding is not allowed "
                    "here: rebuild it (`dgtrs-geo index RASTER --rebuild`) or remove it"
                )
            message = f"embedding index {path} cannot be used ({reason}): rebuilding it"
            warnings.warn(message, IndexRebuildWarning, stacklevel=2)
        index = build()
        index.check(**expected)
        index._write(path)
        return index


def _describe(path: Path, now: float) -> dict[str, Any]:
    """One row of :func:`list_indexes`; ``problem`` says why an index cannot be read."""
    files = [f for f in path.rglob("*") if f.is_file()]
    last_used = path.stat().st_mtime
    row: dict[str, Any] = {
        "path": str(path),
        "size_bytes": sum(f.stat().st_size for f in files),
        "raster": None,
        "model": None,
        "windows": None,
        "created": None,
        "last_used": _dt.datetime.fromtimestamp(last_used, _dt.UTC).isoformat(timespec="seconds"),
        "age_days": round((now - last_used) / 86400, 3),
        "problem": None,
    }
    try:
        meta = json.loads((path / "index.json").read_text())
        row.update(
            raster=meta["raster"]["path"],
            model=meta["model_id"],
            windows=meta["count"],
            created=meta["created"],
        )
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            row["problem"] = f"format version {meta.get('version')!r}, not {VERSION}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        row["problem"] = f"index.json unreadable: {error!r}"
    return row


def list_indexes(root: str | Path) -> list[dict[str, Any]]:
    """Describe every embedding index under ``root`` (searched recursively).

    Args:
        root: an index folder (``cache_dir("indexes")``, a ``.dgtrs-index`` folder) or any
            folder above some.

    Returns:
        One dict per index, sorted by path: ``path``, ``size_bytes``, ``raster`` (path at build
        time), ``model`` (model id), ``windows``, ``created`` and ``last_used`` (ISO 8601, UTC),
        ``age_days`` (since last use) and ``problem`` (``None``, or why it cannot be read).

    """
    root = Path(root)
    now = time.time()
    paths = [p for p in root.rglob(f"*{SUFFIX}") if p.is_dir() and not p.name.startswith(".")]
    return [_describe(p, now) for p in sorted(paths)]


def _stale_reason(row: dict[str, Any], older_than_days: float | None) -> str | None:
    """Why the index of ``row`` should go, or ``None`` to keep it."""
    if row["problem"]:
        return str(row["problem"])
    if older_than_days is not None and row["age_days"] > older_than_days:
        return f"unused for {row['age_days']:.1f} days"
    raster = Path(row["raster"])
    if not raster.is_file():
        return f"its raster {raster} is gone"
    meta = json.loads((Path(row["path"]) / "index.json").read_text())
    try:
        if raster_fingerprint(raster) != meta["fingerprint"]:
            return f"its raster {raster} changed"
    except Exception as error:  # noqa: BLE001 - a raster GDAL cannot open any more is stale too
        return f"its raster {raster} cannot be read ({error!r})"
    return None


def prune_indexes(root: str | Path, older_than_days: float | None = None) -> list[Path]:
    """Remove the embedding indexes under ``root`` that will not be used again.

    Removed: indexes that cannot be read or are of another format version, whose raster is gone
    or changed (content fingerprint), and, when ``older_than_days`` is given, those not used for
    that many days; also hidden leftovers of killed writers, and cached file digests of files
    that are gone or changed. An index another process is writing is left alone.

    Args:
        root: as for :func:`list_indexes`.
        older_than_days: also remove indexes unused for longer than this.

    Returns:
        The removed paths.

    """
    root = Path(root)
    removed: list[Path] = []
    for folder in {p.parent for p in root.rglob(f"*{SUFFIX}*")} | {root}:
        removed += _remove_partials(folder)
    for row in list_indexes(root):
        path = Path(row["path"])
        if (reason := _stale_reason(row, older_than_days)) is None:
            continue
        if (lock := _try_lock(path)) is None:
            continue
        try:
            log.info("removing embedding index %s: %s", path, reason)
            if _delete_folder(path):
                removed.append(path)
        finally:
            lock.release()
    prune_digest_cache()
    return sorted(removed)
