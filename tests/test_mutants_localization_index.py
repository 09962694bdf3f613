"""Tests written from the mutation run on the index store and fingerprint: each pins a behaviour a
surviving mutant changed.

The mutants are of ``dgtrs_geo/localization/index.py`` and ``fingerprint.py``; the triage (each
mutant, equivalent ones with why) is listed in benchmarks/results/mutation-triage.md. Expected
values are written here by hand: digests with xxhash and hashlib directly, footprints and messages
worked out from the inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xxhash
from affine import Affine

from dgtrs_geo.cache import cache_dir
from dgtrs_geo.errors import EmbeddingIndexError, IndexMismatchError
from dgtrs_geo.localization import index as index_module
from dgtrs_geo.localization.fingerprint import file_digest, raster_fingerprint
from dgtrs_geo.localization.index import (
    EmbeddingIndex,
    IndexRebuildWarning,
    default_index_dir,
    footprints,
    index_key,
    list_indexes,
    open_or_build,
    prune_indexes,
)

HOUR_NS = 3600 * 10**9
DAY = 86400
# A 64 x 48 raster of 10 m pixels whose top-left corner is (500000, 4000000).
RASTER = {
    "path": "/data/scene.tif",
    "width": 64,
    "height": 48,
    "crs": None,
    "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0],
    "bands": [1, 2, 3],
    "stretch": None,
    "nodata": None,
}
PLAN = {"scales": [32], "width": 64, "height": 48, "region": [0, 0, 64, 48], "count": 5}
WINDOWS = np.array(
    [[0, 0, 32, 32], [32, 0, 32, 32], [0, 16, 32, 32], [16, 16, 32, 32], [32, 16, 32, 32]]
)
FINGERPRINT = "xxh3-128:" + "0" * 32
LOAD_FIX = ". Rebuild it (`dgtrs-geo index RASTER --rebuild`) or remove it"


def _make(
    model_id: str = "m-1", valid: np.ndarray | None = None, windows: np.ndarray = WINDOWS
) -> EmbeddingIndex:
    embeddings = np.eye(5, 4, dtype=np.float32)
    embeddings[4] = 0.5  # unit norm too
    return EmbeddingIndex.create(
        model_id=model_id,
        fingerprint=FINGERPRINT,
        raster=RASTER,
        plan=PLAN,
        windows=windows,
        embeddings=embeddings,
        valid=valid,
        valid_cell=24 if valid is not None else None,
    )


def _expected(model_id: str = "m-1") -> dict[str, object]:
    return {"model_id": model_id, "fingerprint": FINGERPRINT, "raster": RASTER, "plan": PLAN}


def _rechecksum(path: Path) -> None:
    meta = json.loads((path / "index.json").read_text())
    for name in meta["checksums"]:
        meta["checksums"][name] = (
            "xxh3-128:" + xxhash.xxh3_128((path / name).read_bytes()).hexdigest()
        )
    (path / "index.json").write_text(json.dumps(meta))


def _settled(path: Path, data: bytes) -> Path:
    """A file last written an hour ago, so its digest is cached."""
    path.write_bytes(data)
    hour_ago = time.time_ns() - HOUR_NS
    os.utime(path, ns=(hour_ago, hour_ago))
    return path


def _entry(path: Path) -> Path:
    """The digest cache entry of ``path``: named by the SHA-256 of its resolved path's bytes."""
    name = hashlib.sha256(os.fsencode(str(path.resolve()))).hexdigest()[:32]
    return cache_dir("fingerprints") / f"{name}.json"


# --- fingerprint.py ----------------------------------------------------------------------------


def test_fingerprint_hashes_file_digests_and_names_of_non_local_sources(tmp_path: Path) -> None:
    """The fingerprint is XXH3-128 over one line per file: its digest, or ``name:`` and its name
    for a source that is not a local file (even one whose name is not UTF-8)."""
    tif = tmp_path / "scene.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10, 0, 500000, 0, -10, 4000000),
    ) as dst:
        dst.write(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    line = xxhash.xxh3_128(tif.read_bytes()).hexdigest().encode() + b"\n"
    assert raster_fingerprint(tif) == "xxh3-128:" + xxhash.xxh3_128(line).hexdigest()
    remote = "/vsicurl/http://example.org/b\udcff.tif"  # byte 0xff, as os.fsdecode gives it
    both = line + b"name:/vsicurl/http://example.org/b\xff.tif\n"
    fingerprint = raster_fingerprint(tif, files=[str(tif), remote])
    assert fingerprint == "xxh3-128:" + xxhash.xxh3_128(both).hexdigest()


def test_file_digest_of_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """A non-UTF-8 file name (bytes kept as surrogates) is digested and cached like any other."""
    path = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/scene-\xff.bin"))
    _settled(path, b"pixels" * 100)
    assert file_digest(path) == xxhash.xxh3_128(b"pixels" * 100).hexdigest()
    assert json.loads(_entry(path).read_text())["path"] == str(path.resolve())


def test_digest_cache_entries_hold_the_documented_stat_and_are_trusted(tmp_path: Path) -> None:
    """A cache entry records path, algorithm, (size, mtime_ns, ctime_ns, inode, device) and the
    digest; an entry in that form whose stat matches is used without reading the file."""
    path = _settled(tmp_path / "a.bin", b"abc" * 1000)
    digest = xxhash.xxh3_128(b"abc" * 1000).hexdigest()
    assert file_digest(path) == digest
    st = path.stat()
    stat = {
        "size": 3000,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }
    entry = _entry(path)
    record = {"path": str(path.resolve()), "algorithm": "xxh3-128", "stat": stat, "digest": digest}
    assert json.loads(entry.read_text()) == record
    entry.write_text(json.dumps({**record, "digest": "planted"}))
    assert file_digest(path) == "planted"


def test_an_unwritable_digest_cache_costs_only_speed(tmp_path: Path) -> None:
    """When the cache entry cannot be written the digest is still returned and no temp file stays."""
    path = _settled(tmp_path / "b.bin", b"xyz" * 1000)
    entry = _entry(path)
    (entry / "blocker").mkdir(parents=True)  # a folder where the entry file should go
    assert file_digest(path) == xxhash.xxh3_128(b"xyz" * 1000).hexdigest()
    assert list(entry.parent.glob(f".{entry.name}.*")) == []
    shutil.rmtree(entry)  # the cache is shared by the session's tests


class _Interrupt(BaseException):
    """Stands for Ctrl-C."""


def test_an_interrupt_during_a_digest_cache_write_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt arriving as the cache entry is renamed in reaches the caller."""
    path = _settled(tmp_path / "c.bin", b"123" * 1000)
    real_replace = os.replace

    def replace_then_interrupt(src: str, dst: str) -> None:
        real_replace(src, dst)
        raise _Interrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(_Interrupt):
        file_digest(path)


# --- index.py: where, names, arrays ------------------------------------------------------------


def test_default_index_dir_asks_the_existing_index_folder_whether_it_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing ``.dgtrs-index`` folder is used iff it is writable, whatever its parent is."""
    monkeypatch.delenv("DGTRS_GEO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    raster = tmp_path / "data" / "scene.tif"
    beside = tmp_path / "data" / ".dgtrs-index"
    beside.mkdir(parents=True)
    # Simulated permissions (tests may run as root, who may write anywhere).
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) == beside)
    assert default_index_dir(raster) == beside  # the data folder itself is read-only
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != beside)
    assert default_index_dir(raster) == tmp_path / "xdg" / "dgtrs-geo" / "indexes"


def test_index_key_is_the_sha256_of_the_documented_payload() -> None:
    """Index folder names stay stable: SHA-256 (16 hex digits) of the sorted JSON of the four parts."""
    payload = (
        '{"fingerprint": "xxh3-128:ab", "model_id": "m-1", '
        '"plan": {"scales": [32]}, "raster": {"width": 4}}'
    )
    key = index_key("m-1", "xxh3-128:ab", {"width": 4}, {"scales": [32]})
    assert key == hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_footprints_are_the_map_bounds_of_the_windows() -> None:
    """Window (col 10, row 2, 4 wide, 6 high) of 10 m pixels from (100, 200): x 200-240, y 120-180."""
    transform = Affine(10, 0, 100, 0, -10, 200)
    np.testing.assert_array_equal(
        footprints(np.array([[10, 2, 4, 6], [0, 0, 1, 1]]), transform),
        [[200.0, 120.0, 240.0, 180.0], [100.0, 190.0, 110.0, 200.0]],
    )
    # Through create(): the last window [32, 16, 32, 32] of RASTER.
    np.testing.assert_array_equal(_make().footprints[4], [500320.0, 3999520.0, 500640.0, 3999840.0])


def test_windows_are_stored_as_int64_whatever_the_caller_gives(tmp_path: Path) -> None:
    """``windows.npy`` is int64 [N, 4] (the documented format) even from int32 windows."""
    index = _make(windows=WINDOWS.astype(np.int32))
    assert index.windows.dtype == np.int64
    index.save(tmp_path / "a.dgtrs-index")
    assert np.load(tmp_path / "a.dgtrs-index" / "windows.npy").dtype == np.int64


def test_arrays_written_in_npy_format_2_load(tmp_path: Path) -> None:
    """An index whose .npy files carry a version-2.0 header (numpy writes it for large headers) loads."""
    path = _make().save(tmp_path / "a.dgtrs-index")
    windows = np.load(path / "windows.npy")
    with (path / "windows.npy").open("wb") as file:
        np.lib.format.write_array(file, windows, version=(2, 0))
    assert (path / "windows.npy").read_bytes()[6:8] == b"\x02\x00"
    _rechecksum(path)
    np.testing.assert_array_equal(EmbeddingIndex.load(path).windows, WINDOWS)


def test_subset_keeps_overlapping_windows_and_drops_the_mask(tmp_path: Path) -> None:
    """A subset holds the windows overlapping the region (touching is not overlapping); it has no
    validity mask, says so (``valid_cell`` None), and can be saved and loaded."""
    whole = _make(valid=np.ones((2, 3), bool))
    plan = {**PLAN, "region": [32, 0, 32, 48]}
    part = whole.subset((32, 0, 32, 48), plan)
    np.testing.assert_array_equal(
        part.windows, [[32, 0, 32, 32], [16, 16, 32, 32], [32, 16, 32, 32]]
    )
    assert part.valid is None and part.meta["valid_cell"] is None and part.meta["count"] == 3
    np.testing.assert_array_equal(
        EmbeddingIndex.load(part.save(tmp_path / "p.dgtrs-index")).windows, part.windows
    )


def test_the_index_folder_mode_follows_the_umask(tmp_path: Path) -> None:
    """mkdtemp makes 0700 folders; a saved index gets 0777 minus the umask like any folder."""
    old = os.umask(0o027)
    try:
        path = _make().save(tmp_path / "a.dgtrs-index")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o7777 == 0o750


def test_index_json_is_indented_for_people_to_read(tmp_path: Path) -> None:
    """index.json is written with two-space indentation, one field a line."""
    path = _make().save(tmp_path / "a.dgtrs-index")
    lines = (path / "index.json").read_text().splitlines()
    assert lines[:3] == ["{", '  "format": "dgtrs-geo-embedding-index",', '  "version": 2,']


# --- index.py: trust and messages --------------------------------------------------------------


def _drop_last_window(path: Path) -> None:
    np.save(path / "windows.npy", np.load(path / "windows.npy")[:4])


def _float_windows(path: Path) -> None:
    np.save(path / "windows.npy", np.load(path / "windows.npy").astype(np.float64))


def _drop_last_embedding(path: Path) -> None:
    np.save(path / "embeddings.npy", np.load(path / "embeddings.npy")[:4])


def _nan_embedding(path: Path) -> None:
    embeddings = np.load(path / "embeddings.npy")
    embeddings[2, 1] = np.nan
    np.save(path / "embeddings.npy", embeddings)


def _window_below_the_raster(path: Path) -> None:
    windows = np.load(path / "windows.npy")
    windows[4, 1] = 20  # rows 20-52 of a 48-row raster
    np.save(path / "windows.npy", windows)


def _transposed_mask(path: Path) -> None:
    np.save(path / "valid.npy", np.ones((3, 2), bool))


CORRUPTIONS: list[tuple[Callable[[Path], None], str]] = [
    (_drop_last_window, "windows.npy does not hold 5 windows (count in index.json)"),
    (_float_windows, "windows.npy does not hold integer pixel windows"),
    (_drop_last_embedding, "embeddings.npy is not 5 x 4 (count and dim in index.json)"),
    (_nan_embedding, "the embeddings hold non-finite values (NaN or inf)"),
    (_window_below_the_raster, "windows.npy holds windows outside the 64 x 48 raster"),
    (_transposed_mask, "valid.npy is not a 2 x 3 mask"),  # ceil(48 / 24) x ceil(64 / 24)
]


@pytest.mark.parametrize(
    ("corrupt", "reason"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS]
)
def test_load_says_which_array_is_wrong(
    tmp_path: Path, corrupt: Callable[[Path], None], reason: str
) -> None:
    """Arrays that do not make the index index.json describes are refused with the exact reason."""
    path = _make(valid=np.ones((2, 3), bool)).save(tmp_path / "a.dgtrs-index")
    corrupt(path)
    _rechecksum(path)
    with pytest.raises(EmbeddingIndexError) as raised:
        EmbeddingIndex.load(path)
    assert str(raised.value) == f"embedding index {path} cannot be used: {reason}{LOAD_FIX}"


def test_load_says_which_format_or_checksum_list_is_wrong(tmp_path: Path) -> None:
    """A version-1 index.json and a checksum list missing a file are refused naming what they hold."""
    path = _make().save(tmp_path / "a.dgtrs-index")
    meta = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(EmbeddingIndexError) as raised:
        EmbeddingIndex.load(path)
    reason = (
        "it is not a version-2 dgtrs-geo embedding index "
        "(format 'dgtrs-geo-embedding-index', version 1)"
    )
    assert str(raised.value) == f"embedding index {path} cannot be used: {reason}{LOAD_FIX}"
    del meta["checksums"]["footprints.npy"]
    (path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(EmbeddingIndexError) as raised:
        EmbeddingIndex.load(path)
    reason = (
        "index.json lists checksums of ['embeddings.npy', 'windows.npy'], "
        "not ['embeddings.npy', 'footprints.npy', 'windows.npy']"
    )
    assert str(raised.value) == f"embedding index {path} cannot be used: {reason}{LOAD_FIX}"


def test_a_mismatch_error_names_every_difference_and_the_fix(tmp_path: Path) -> None:
    """check() lists what differs, separated by "; ", names the folder if saved, and says the fix."""
    index = _make()
    raster = {**RASTER, "width": 65}
    plan = {**PLAN, "scales": [64]}
    problems = (
        "it was built with model 'm-1', not 'm-2'; "
        "the raster's pixels changed since it was built; "
        "the raster's size, georeferencing, nodata, bands or stretch differ; "
        f"its window plan {PLAN} differs from {plan}"
    )
    fix = ". Rebuild it (`dgtrs-geo index RASTER --model ...`) or let localize use its cache directory."
    with pytest.raises(IndexMismatchError) as raised:
        index.check("m-2", "xxh3-128:" + "1" * 32, raster, plan)
    assert str(raised.value) == f"embedding index does not fit: {problems}{fix}"
    index.save(tmp_path / "a.dgtrs-index")
    with pytest.raises(IndexMismatchError) as raised:
        index.check("m-2", "xxh3-128:" + "1" * 32, raster, plan)
    where = tmp_path / "a.dgtrs-index"
    assert str(raised.value) == f"embedding index at {where} does not fit: {problems}{fix}"


def test_rebuild_warnings_point_at_the_caller(tmp_path: Path) -> None:
    path = _make("m-1").save(tmp_path / "a.dgtrs-index")
    with pytest.warns(IndexRebuildWarning) as caught:
        open_or_build(path, _expected("m-2"), lambda: _make("m-2"))
    assert [warning.filename for warning in caught] == [__file__]


def test_an_index_that_does_not_fit_is_refused_or_rebuilt_with_a_warning(tmp_path: Path) -> None:
    """open_or_build on an index of another model: refused (exact message) when rebuilding is not
    allowed, else rebuilt with an IndexRebuildWarning."""
    path = _make("m-1").save(tmp_path / "a.dgtrs-index")
    reason = "it does not fit: it was built with model 'm-1', not 'm-2'"
    with pytest.raises(EmbeddingIndexError) as raised:
        open_or_build(path, _expected("m-2"), lambda: _make("m-2"), allow_rebuild=False)
    assert str(raised.value) == (
        f"embedding index {path} cannot be used: {reason}. Rebuilding is not allowed here: "
        "rebuild it (`dgtrs-geo index RASTER --rebuild`) or remove it"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = open_or_build(path, _expected("m-2"), lambda: _make("m-2"))
    (warning,) = caught
    assert warning.category is IndexRebuildWarning
    assert (
        str(warning.message) == f"embedding index {path} cannot be used ({reason}): rebuilding it"
    )
    assert index.model_id == EmbeddingIndex.load(path).model_id == "m-2"


# --- index.py: leftovers, list, prune ----------------------------------------------------------


def test_a_writer_removes_leftovers_of_its_own_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index is written in ``.<name>.tmp-*`` beside it; the next writer of that index removes
    such a folder (and an ``.old-*`` one) left by a killed writer, although it holds their lock."""
    path = tmp_path / "a.dgtrs-index"
    seen: list[str] = []
    real_swap_in = index_module._swap_in

    def spy(tmp: Path, target: Path) -> None:
        seen.append(tmp.name)
        real_swap_in(tmp, target)

    monkeypatch.setattr(index_module, "_swap_in", spy)
    _make().save(path)
    assert seen[0].startswith(".a.dgtrs-index.tmp-")
    killed = [tmp_path / seen[0], tmp_path / ".a.dgtrs-index.old-x1"]
    for leftover in killed:
        (leftover / "index").mkdir(parents=True)
    open_or_build(path, _expected(), _make, rebuild=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dgtrs-index", "a.dgtrs-index.lock"]


def test_prune_goes_on_past_what_cannot_be_removed_and_does_not_report_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale index or leftover holding a file that cannot be deleted stays, is not reported as
    removed, and does not stop prune from removing the others."""
    stuck, stale = tmp_path / "stuck.dgtrs-index", tmp_path / "stale.dgtrs-index"
    stuck_tmp, stale_tmp = (
        tmp_path / ".stuck.dgtrs-index.tmp-k1",
        tmp_path / ".stale.dgtrs-index.tmp-k2",
    )
    for folder in (stuck, stale, stuck_tmp, stale_tmp):
        folder.mkdir()
        (folder / "index.json").write_text("{")  # unreadable: stale
        (folder / f"{folder.name}-file").write_bytes(b"")
    real_unlink = os.unlink

    def unlink(name: str, *args: object, **kwargs: object) -> None:
        if "stuck" in os.fsdecode(name):
            raise PermissionError(1, "Operation not permitted", name)
        real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert prune_indexes(tmp_path) == [stale_tmp, stale]
    assert stuck.is_dir() and stuck_tmp.is_dir()
    assert not stale.exists() and not stale_tmp.exists()


def test_list_rows_of_an_unreadable_and_an_old_index(tmp_path: Path) -> None:
    """Rows have every documented field; an unreadable index.json gives None for what it would
    hold, and an old format is named by its version."""
    broken, old = tmp_path / "broken.dgtrs-index", tmp_path / "old.dgtrs-index"
    broken.mkdir()
    (broken / "index.json").write_text("{")
    old_meta = {
        "format": "x",
        "version": 1,
        "raster": {"path": "/r.tif"},
        "model_id": "m-0",
        "count": 7,
        "created": "2020-01-01T00:00:00+00:00",
    }
    old.mkdir()
    (old / "index.json").write_text(json.dumps(old_meta))
    with pytest.raises(ValueError) as parse_error:
        json.loads("{")
    unreadable = f"index.json unreadable: {parse_error.value!r}"
    rows = list_indexes(tmp_path)
    for row in rows:
        del row["last_used"], row["age_days"]  # pinned by the next test
    assert rows == [
        {
            "path": str(broken),
            "size_bytes": 1,
            "raster": None,
            "model": None,
            "windows": None,
            "created": None,
            "problem": unreadable,
        },
        {
            "path": str(old),
            "size_bytes": len(json.dumps(old_meta)),
            "raster": "/r.tif",
            "model": "m-0",
            "windows": 7,
            "created": "2020-01-01T00:00:00+00:00",
            "problem": "format version 1, not 2",
        },
    ]


def test_list_gives_last_use_in_utc_and_age_in_days(tmp_path: Path) -> None:
    """``last_used`` is the folder's mtime in ISO 8601 UTC; ``age_days`` its age to 3 decimals."""
    now = int(time.time())
    ages = {"a": 1.5, "b": 1000.0}
    for name, days in ages.items():
        path = _make().save(tmp_path / f"{name}.dgtrs-index")
        when = now - int(days * DAY)
        os.utime(path, (when, when))
    rows = list_indexes(tmp_path)
    for row, days in zip(rows, ages.values(), strict=True):
        when = time.gmtime(now - int(days * DAY))
        assert row["last_used"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", when)
        assert row["age_days"] == days  # (now - mtime) is a second at most above days * DAY


def test_list_skips_the_hidden_index_folder_and_files(tmp_path: Path) -> None:
    """The ``.dgtrs-index`` folder beside rasters (its name ends like an index) and a plain file
    named like an index are not listed, so prune can never remove them."""
    index = _make().save(tmp_path / ".dgtrs-index" / "scene-0123.dgtrs-index")
    (tmp_path / "notes.dgtrs-index").write_text("not an index")
    assert [row["path"] for row in list_indexes(tmp_path)] == [str(index)]
