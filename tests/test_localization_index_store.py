"""Finding and removing embedding indexes: list_indexes, prune_indexes, default_index_dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from dgtrs_geo.localization.index import (
    EmbeddingIndex,
    default_index_dir,
    index_key,
    list_indexes,
    prune_indexes,
)
from dgtrs_geo.localization.raster import RasterSource
from dgtrs_geo.localization.windows import plan_windows

DAY = 86400


def _raster(path: Path, value: int) -> Path:
    profile = {"driver": "GTiff", "width": 64, "height": 48, "count": 3, "dtype": "uint8"}
    transform = from_origin(500000, 4000000, 10, 10)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(np.full((3, 48, 64), value, np.uint8))
    return path


def _index(raster: Path, folder: Path, model_id: str = "m-1") -> EmbeddingIndex:
    source = RasterSource(raster)
    plan = plan_windows(source.width, source.height, (32,))
    embeddings = np.random.default_rng(0).normal(size=(len(plan), 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    parts = {
        "model_id": model_id,
        "fingerprint": source.fingerprint(),
        "raster": source.describe(),
        "plan": plan.to_json(),
    }
    index = EmbeddingIndex.create(**parts, windows=plan.windows, embeddings=embeddings)
    index.save(folder / f"{raster.stem}-{index_key(**parts)}.dgtrs-index")
    return index


def _age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def test_list_describes_each_index(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    a = _index(_raster(tmp_path / "a.tif", 10), folder)
    b = _index(_raster(tmp_path / "b.tif", 20), folder / "nested", model_id="m-2")
    _age(b.path, 3)
    (folder / ".a-0000.dgtrs-index.tmp-x").mkdir()  # a partial write is not an index
    rows = list_indexes(folder)
    assert [row["path"] for row in rows] == [str(a.path), str(b.path)]
    for row, index in zip(rows, (a, b), strict=True):
        files = list(Path(row["path"]).iterdir())
        assert row["size_bytes"] == sum(f.stat().st_size for f in files)
        assert row["raster"] == index.meta["raster"]["path"]
        assert row["model"] == index.model_id and row["windows"] == len(index)
        assert row["created"] == index.meta["created"] and row["problem"] is None
    assert rows[0]["age_days"] < 0.01 and 2.99 < rows[1]["age_days"] < 3.01
    json.dumps(rows)  # the CLI prints them as JSON


def test_prune_removes_what_cannot_be_used_again(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    kept = _index(_raster(tmp_path / "kept.tif", 10), folder)
    old = _index(_raster(tmp_path / "old.tif", 20), folder)
    changed_raster = _raster(tmp_path / "changed.tif", 30)
    changed = _index(changed_raster, folder)
    gone_raster = _raster(tmp_path / "gone.tif", 40)
    gone = _index(gone_raster, folder)
    broken = _index(_raster(tmp_path / "broken.tif", 50), folder)
    (broken.path / "index.json").write_text("{")
    partial = folder / ".kept-0000.dgtrs-index.tmp-k1ll3d"
    partial.mkdir()
    _age(old.path, 40)
    _raster(changed_raster, 31)
    gone_raster.unlink()

    removed = prune_indexes(folder)
    assert removed == sorted([changed.path, gone.path, broken.path, partial])
    assert {row["path"] for row in list_indexes(folder)} == {str(kept.path), str(old.path)}
    assert prune_indexes(folder, older_than_days=30) == [old.path]
    assert [row["path"] for row in list_indexes(folder)] == [str(kept.path)]
    EmbeddingIndex.load(kept.path)


def test_a_used_index_is_not_old(tmp_path: Path) -> None:
    from dgtrs_geo.localization.index import open_or_build

    folder = tmp_path / "idx"
    index = _index(_raster(tmp_path / "a.tif", 10), folder)
    _age(index.path, 40)
    expected = {k: index.meta[k] for k in ("model_id", "fingerprint", "raster", "plan")}
    open_or_build(index.path, expected, lambda: pytest.fail("the index is sound"))
    assert prune_indexes(folder, older_than_days=30) == []


def test_default_index_dir_uses_the_cache_and_expands_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DGTRS_GEO_CACHE", "~/dg-cache")
    raster = tmp_path / "data" / "scene.tif"
    assert default_index_dir(raster) == tmp_path / "home" / "dg-cache" / "indexes"
    monkeypatch.delenv("DGTRS_GEO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "data").mkdir()
    assert default_index_dir(raster) == tmp_path / "data" / ".dgtrs-index"
    # A raster in a folder this user cannot write (tests may run as root: simulate it).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert default_index_dir(raster) == tmp_path / "xdg" / "dgtrs-geo" / "indexes"
