"""Catalog sources (files, globs, folders, STAC), dates, shares of array jobs: no model needed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from dgtrs_geo.catalog.distributed import owner, resolve_shard
from dgtrs_geo.catalog.indexing import scene_scales
from dgtrs_geo.catalog.options import catalog_options
from dgtrs_geo.catalog.search import parse_interval
from dgtrs_geo.catalog.sources import resolve_sources, scene_id
from dgtrs_geo.errors import InputError

UTC = dt.UTC


def _tif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
        crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5000000),
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, 8, 8), dtype=np.uint8))
    return path


def test_folders_globs_and_files_give_each_scene_once(tmp_path: Path) -> None:
    a = _tif(tmp_path / "tiles" / "a_20240105.tif")
    b = _tif(tmp_path / "tiles" / "deep" / "b_20231231.TIF")
    _tif(tmp_path / "tiles" / ".dgtrs-index" / "cached.tif")  # hidden: an index cache
    (tmp_path / "tiles" / "notes.txt").write_text("not a raster")
    scenes, failures = resolve_sources(
        [tmp_path / "tiles", str(tmp_path / "tiles" / "*.tif"), a], date_from=r"_(\d{8})"
    )
    assert failures == []
    assert [s.href for s in scenes] == sorted(
        [str(a.resolve()), str(b.resolve())], key=lambda h: scene_id(h)
    )
    dates = {Path(s.href).name: s.date for s in scenes}
    assert dates == {
        "a_20240105.tif": dt.datetime(2024, 1, 5, tzinfo=UTC),
        "b_20231231.TIF": dt.datetime(2023, 12, 31, tzinfo=UTC),
    }
    # Ids are deterministic, differ between files, and are safe as file names.
    again, _ = resolve_sources([b, a])
    assert [s.scene_id for s in again] == [s.scene_id for s in scenes]
    assert len({s.scene_id for s in scenes}) == 2
    assert all("/" not in s.scene_id for s in scenes)


def test_missing_sources_and_undated_files_are_reported(tmp_path: Path) -> None:
    _tif(tmp_path / "x.tif")
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match="matched no date in 1 scene"):
        scenes, failures = resolve_sources(
            [tmp_path / "x.tif", tmp_path / "nope.tif", tmp_path / "empty", "/no/*.tif"],
            date_from=r"(\d{8})",
        )
    assert len(scenes) == 1 and scenes[0].date is None
    assert [f.source for f in failures] == [
        str(tmp_path / "nope.tif"), str(tmp_path / "empty"), "/no/*.tif"
    ]  # fmt: skip
    assert "no such file" in failures[0].error
    assert "no raster file" in failures[1].error
    assert "no file matches" in failures[2].error
    with pytest.raises(InputError, match="not a regular expression"):
        resolve_sources([tmp_path], date_from="(")
    with pytest.raises(InputError, match="at least one source"):
        resolve_sources([])


def _item(item_id: str, href: str, when: dt.datetime, asset: str = "visual") -> pystac.Item:
    item = pystac.Item(item_id, None, None, when, {})
    item.add_asset(asset, pystac.Asset(href, media_type=pystac.MediaType.COG))
    return item


def test_stac_item_collection_with_relative_hrefs(tmp_path: Path) -> None:
    a = _tif(tmp_path / "stac" / "data" / "a.tif")
    when = dt.datetime(2022, 6, 1, 10, 30, tzinfo=UTC)
    collection = pystac.ItemCollection(
        [
            _item("scene-a", "data/a.tif", when),
            _item("scene-b", "data/b.tif", when, asset="B04"),  # no "visual" asset
        ]
    )
    path = tmp_path / "stac" / "items.json"
    path.write_text(json.dumps(collection.to_dict(transform_hrefs=False)))
    scenes, failures = resolve_sources([path])
    assert [(s.href, s.item_id, s.date) for s in scenes] == [(str(a.resolve()), "scene-a", when)]
    assert len(failures) == 1
    assert "'scene-b' has no asset 'visual' (it has: B04)" in failures[0].error
    # The same file reached by its path is the same scene.
    direct, _ = resolve_sources([a])
    assert direct[0].scene_id == scenes[0].scene_id
    chosen, failures = resolve_sources([path], asset="B04")
    assert [s.item_id for s in chosen] == ["scene-b"]
    assert "has no asset 'B04' (it has: visual)" in failures[0].error


def test_stac_static_catalog_is_walked_recursively(tmp_path: Path) -> None:
    rasters = [_tif(tmp_path / "src" / f"{name}.tif") for name in ("n", "s")]
    root = pystac.Catalog("root", "two collections")
    for i, raster in enumerate(rasters):
        child = pystac.Collection(
            f"c{i}", "child", pystac.Extent(
                pystac.SpatialExtent([[15, 45, 16, 46]]),
                pystac.TemporalExtent([[dt.datetime(2020, 1, 1, tzinfo=UTC), None]]),
            ),
        )  # fmt: skip
        child.add_item(
            _item(f"item-{i}", str(raster.resolve()), dt.datetime(2021, 1, i + 1, tzinfo=UTC))
        )
        root.add_child(child)
    root.normalize_hrefs(str(tmp_path / "catalog"))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    scenes, failures = resolve_sources([tmp_path / "catalog" / "catalog.json"])
    assert failures == []
    assert sorted(s.item_id for s in scenes) == ["item-0", "item-1"]
    assert sorted(s.href for s in scenes) == sorted(str(r.resolve()) for r in rasters)
    assert {s.date.day for s in scenes} == {1, 2}


def test_json_that_is_not_stac_is_a_failure_of_that_source(tmp_path: Path) -> None:
    bad = tmp_path / "points.json"
    bad.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    good = _tif(tmp_path / "good.tif")
    scenes, failures = resolve_sources([bad, good])
    assert [s.href for s in scenes] == [str(good.resolve())]
    assert "not a STAC catalog" in failures[0].error and failures[0].source == str(bad)


def test_date_intervals() -> None:
    start, end = parse_interval("2024-01-01/2024-01-31")
    assert start == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert end == dt.datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_interval("../2020-05-01T12:00:00Z") == (
        None, dt.datetime(2020, 5, 1, 12, tzinfo=UTC)
    )  # fmt: skip
    assert parse_interval("2020-05-01/..")[1] is None
    assert parse_interval("20200501") == (
        dt.datetime(2020, 5, 1, tzinfo=UTC),
        dt.datetime(2020, 5, 1, 23, 59, 59, 999999, tzinfo=UTC),
    )
    with pytest.raises(InputError, match="ends before it starts"):
        parse_interval("2024-02-01/2024-01-01")
    with pytest.raises(InputError, match="not an ISO 8601 date"):
        parse_interval("last week/..")


@pytest.mark.parametrize(
    ("shard", "environ", "expected"),
    [
        (None, {}, (0, 1)),
        ("2/5", {}, (2, 5)),
        ((1, 3), {}, (1, 3)),
        # SLURM arrays may start at 1 (--array=1-4): the share is counted from the first task.
        (
            None,
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            (2, 4),
        ),  # fmt: skip
        ("8", {"JOB_COMPLETION_INDEX": "7"}, (7, 8)),
        ("3", {"AWS_BATCH_JOB_ARRAY_INDEX": "0"}, (0, 3)),
        # An explicit I/N wins over the environment.
        ("0/2", {"JOB_COMPLETION_INDEX": "1"}, (0, 2)),
    ],
)
def test_shard_from_flag_and_array_job_variables(shard, environ, expected) -> None:
    assert resolve_shard(shard, environ) == expected


@pytest.mark.parametrize(
    ("shard", "environ", "message"),
    [
        ("5/5", {}, "0 <= I < N"),
        ("a/b", {}, "must be I/N"),
        (None, {"JOB_COMPLETION_INDEX": "1"}, "number of jobs is unknown"),
        (None, {"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, "pass --shard N"),
        ("4", {}, "no array-job index variable"),
        ("3", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}, "differs"),
        ("2", {"JOB_COMPLETION_INDEX": "2"}, "0 <= I < N"),
    ],
)
def test_bad_shards_are_refused(shard, environ, message) -> None:
    with pytest.raises(InputError, match=message):
        resolve_shard(shard, environ)


def test_owners_split_scenes_disjointly_and_completely() -> None:
    ids = [f"scene-{i}" for i in range(200)]
    shards, world = 3, 2
    owners = [owner(i, shards, world) for i in ids]
    assert all(0 <= s < shards and 0 <= r < world for s, r in owners)
    # Every (shard, rank) gets some of 200 scenes, and the assignment does not depend on order.
    assert len(set(owners)) == shards * world
    assert [owner(i, shards, world) for i in reversed(ids)] == owners[::-1]
    counts = np.bincount([s * world + r for s, r in owners])
    assert counts.min() > 200 / (shards * world) / 2


def test_window_sizes_too_small_for_a_scene_are_left_out() -> None:
    options = catalog_options(scales=(40, 100))
    assert scene_scales(options, gsd=3.0) == ((33,), (100,))
    assert scene_scales(options, gsd=0.5) == ((80, 200), (40, 100))
    # The model's patch raises the floor.
    assert scene_scales(options, gsd=0.5, smallest=96) == ((200,), (100,))
    with pytest.raises(InputError, match="under 16 px .* at least 192 m"):
        scene_scales(options, gsd=12.0)
    pixels = catalog_options(scales=(64, 128), scale_unit="px")
    assert scene_scales(pixels, gsd=30.0) == ((64, 128), (64, 128))
