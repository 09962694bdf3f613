"""Content fingerprints of rasters: any change of the bytes GDAL reads changes the fingerprint.

A raster's fingerprint hashes the whole content of every file its dataset is made of: GDAL's file
list (the raster itself, external overviews and masks, world files) and, for a VRT, every source
file, recursively through nested VRTs. GDAL's ``.aux.xml`` side files are left out: QGIS and GDAL
write statistics into them when a layer is shown, and what they could change about the pixels
(nodata, georeferencing) is part of :meth:`RasterSource.describe
<dgtrs_geo.localization.raster.RasterSource.describe>`, which an index records beside the
fingerprint. Files are read once each in 8 MiB chunks and hashed with XXH3-128: change
detection, not authentication (whoever can write the raster can feed it any pixels anyway), at
memory speed, so a cold fingerprint costs about one sequential read of the files.

Hashing a 10 GB raster on every query would cost seconds, so digests are cached: one small JSON
file per hashed file in ``cache_dir("fingerprints")``, named after the file's resolved path, with
the digest and the file's ``(size, mtime_ns, ctime_ns, inode, device)``. A cached digest is used
only while all five still match (``ctime`` also changes when a tool writes a file and restores its
mtime). A file changed in the last :data:`SETTLE_NS` is hashed but not cached: timestamps tick
coarser than writes, so a second write within the same tick would keep them (git's "racy clean"
problem). Entries are written atomically, so concurrent processes can share the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import rasterio
import xxhash
from rasterio.errors import NotGeoreferencedWarning

from ..cache import cache_dir

__all__ = [
    "ALGORITHM",
    "content_digest",
    "dataset_files",
    "file_digest",
    "prune_digest_cache",
    "raster_fingerprint",
]

#: The content hash; it prefixes every fingerprint, so a change of method changes them all.
ALGORITHM = "xxh3-128"

#: Read size while hashing: large enough for sequential disk reads, small enough for memory.
_CHUNK = 8 << 20

#: Files changed this recently are hashed but their digest is not cached.
SETTLE_NS = 2_000_000_000


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def _entry_path(path: Path) -> Path:
    name = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir("fingerprints") / f"{name}.json"


def content_digest(path: str | Path) -> str:
    """Return the XXH3-128 hex digest of a file's whole content, read now (no cache)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with Path(path).open("rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _read_entry(entry: Path, path: Path, key: dict[str, Any]) -> str | None:
    try:
        cached = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    if (
        isinstance(cached, dict)
        and cached.get("path") == str(path)
        and cached.get("algorithm") == ALGORITHM
        and cached.get("stat") == key
        and isinstance(cached.get("digest"), str)
    ):
        return str(cached["digest"])
    return None


def _write_entry(entry: Path, record: dict[str, Any]) -> None:
    """Store a cache entry atomically; a cache that cannot be written only costs speed."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", dir=entry.parent)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(record, file)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass


def file_digest(path: str | Path) -> str:
    """Return the XXH3-128 hex digest of a file's whole content, from the cache when it is valid.

    Args:
        path: a local file.

    Returns:
        32 hex digits.

    """
    path = Path(path).resolve()
    key = _stat_key(path)
    entry = _entry_path(path)
    if (digest := _read_entry(entry, path, key)) is not None:
        return digest
    started = time.time_ns()
    digest = content_digest(path)
    # A file written during the read, or so recently that a later write could keep its stat
    # key, is not cached: the next call hashes it again.
    if _stat_key(path) == key and key["mtime_ns"] < started - SETTLE_NS:
        record = {"path": str(path), "algorithm": ALGORITHM, "stat": key, "digest": digest}
        _write_entry(entry, record)
    return digest


def prune_digest_cache() -> list[Path]:
    """Remove cached digests of files that no longer exist or changed; return the entries removed."""
    removed = []
    for entry in sorted(cache_dir("fingerprints").glob("*.json")):
        try:
            path = Path(json.loads(entry.read_text())["path"])
            stale = _read_entry(entry, path, _stat_key(path)) is None
        except (OSError, ValueError, KeyError, TypeError):
            stale = True
        if not stale:
            continue
        try:
            entry.unlink(missing_ok=True)
        except OSError:  # a read-only shared cache, or a folder in its place: leave it
            continue
        removed.append(entry)
    return removed


def _gdal_files(path: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return list(dataset.files)


def dataset_files(path: str | Path, files: list[str] | None = None) -> list[str]:
    """Return the files a GDAL dataset reads pixels from, the dataset's own file first.

    GDAL's file list of the dataset, with the sources of every VRT in it listed recursively (GDAL
    lists a VRT's direct sources only) and ``.aux.xml`` side files left out.

    Args:
        path: the dataset.
        files: its GDAL file list when the caller has the dataset open already.

    Returns:
        Paths as GDAL gives them, each once; ``[path]`` when GDAL lists none.

    """
    pending = list(files if files is not None else _gdal_files(str(path))) or [str(path)]
    seen: list[str] = []
    while pending:
        name = pending.pop(0)
        if name in seen or name.lower().endswith(".aux.xml"):
            continue
        seen.append(name)
        if name.lower().endswith(".vrt") and len(seen) > 1 and os.path.isfile(name):
            pending.extend(_gdal_files(name))
    return seen


def raster_fingerprint(path: str | Path, files: list[str] | None = None) -> str:
    """Return a fingerprint of the whole content of every file a raster's pixels come from.

    Only content counts, not names: a copy or a moved raster keeps its fingerprint. A source that
    is not a local file (``/vsicurl/...``) counts by its name only.

    Args:
        path: anything GDAL opens.
        files: the dataset's GDAL file list, when the caller has it open already.

    Returns:
        ``"xxh3-128:"`` and 32 hex digits.

    """
    combined = xxhash.xxh3_128()
    for name in dataset_files(path, files):
        part = file_digest(name) if os.path.isfile(name) else f"name:{name}"
        combined.update(f"{part}\n".encode("utf-8", "surrogateescape"))
    return f"{ALGORITHM}:{combined.hexdigest()}"
