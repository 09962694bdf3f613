"""The worker's catalog operations, in process: build (progress, cancel), search, localize a scene.

Each answer is compared with the catalog engine called directly (``Catalog.search``) or with the
single-raster pipeline (``localize``) on the same scene.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from test_catalog_cli import make_scene
from test_worker import _Lines

from dgtrs_geo.catalog import Catalog
from dgtrs_geo.localization import localize

BUILD = {"scales": [32, 64], "scale_unit": "px", "device": "cpu"}


@pytest.fixture
def worker():
    lines = _Lines()
    yield lines
    lines.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    for seed in range(3):
        make_scene(folder / f"tile_{seed}.tif", seed)
    return folder


def build(worker: _Lines, scenes: Path, root: Path, model: Path, request_id: str = "b") -> dict:
    worker.send(request_id, "catalog_build", sources=[str(scenes)], out=str(root),
                model=str(model), options=BUILD)  # fmt: skip
    reply = worker.out.wait_for(request_id, timeout=300)
    assert reply["event"] == "result", reply
    return reply["result"]


def test_build_reports_progress_and_counts(
    worker: _Lines, scenes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    result = build(worker, scenes, root, tiny_checkpoint)
    index = Catalog.open(root).index
    assert result["ok"] and result["failed"] == []
    assert (result["indexed"], result["unchanged"], result["scenes"]) == (3, 0, 3)
    assert result["windows"] == len(index) and result["catalog"] == str(root.resolve())
    progress = [e for e in worker.out.events if e["id"] == "b" and e["event"] == "progress"]
    assert any(e["stage"] == "encoding" and e["fraction"] > 0 for e in progress)
    again = build(worker, scenes, root, tiny_checkpoint, "b2")
    assert (again["indexed"], again["unchanged"]) == (0, 3)


def test_search_rows_and_geopackage_are_the_engines(
    worker: _Lines, scenes: Path, tiny_checkpoint: Path, tiny_model, tmp_path: Path
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    build(worker, scenes, root, tiny_checkpoint)
    texts = ["a road", "a river"]
    # The model is left out: the worker takes the one catalog.json records.
    worker.send("s", "catalog_search", catalog=str(root), queries=texts,
                options={"top": 4, "out_dir": str(tmp_path / "out"), "device": "cpu"})  # fmt: skip
    reply = worker.out.wait_for("s", timeout=120)
    assert reply["event"] == "result", reply
    result = reply["result"]
    expected = Catalog.open(root).search(texts, top=4, model=tiny_model)
    rows = result["rows"]
    assert result["count"] == len(rows) == len(expected) == 8
    for row, want in zip(rows, expected.itertuples(), strict=True):
        assert (row["query"], row["rank"], row["scene"], row["href"]) == (
            want.query, want.rank, want.scene, want.href,
        )  # fmt: skip
        assert row["score"] == pytest.approx(want.score, abs=1e-5)
        assert (row["col_off"], row["row_off"], row["width"]) == (
            want.col_off, want.row_off, want.width,
        )  # fmt: skip
        assert shapely.from_wkt(row["wkt"]).equals_exact(want.geometry, 1e-9)
    written = gpd.read_file(result["gpkg"], layer=result["layer"])
    assert written.crs.to_epsg() == 4326 and list(written["scene"]) == list(expected["scene"])
    assert Path(result["gpkg"]).parent == tmp_path / "out"

    # A box around one scene: only its windows, as the engine gives them.
    one = expected.iloc[0]
    box = list(one.geometry.bounds)
    worker.send("s2", "catalog_search", catalog=str(root), queries="a road",
                model=str(tiny_checkpoint), options={"top": 3, "bbox": box})  # fmt: skip
    boxed = worker.out.wait_for("s2", timeout=120)["result"]
    want = Catalog.open(root).search("a road", top=3, bbox=box, model=tiny_model)
    assert [r["scene"] for r in boxed["rows"]] == list(want["scene"])
    assert all(shapely.from_wkt(r["wkt"]).intersects(shapely.box(*box)) for r in boxed["rows"])


def test_localize_a_scene_from_stored_embeddings_matches_localize(
    worker: _Lines, scenes: Path, tiny_checkpoint: Path, tiny_model, tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    build(worker, scenes, root, tiny_checkpoint)
    record = Catalog.open(root).index.scenes.iloc[1]

    def no_encoding(*args, **kwargs):
        raise AssertionError("a catalog scene must not be encoded again")

    monkeypatch.setattr("dgtrs_geo.localization.session.encode_windows", no_encoding)
    worker.send("l", "catalog_localize", catalog=str(root), scene=record["scene_id"],
                queries=["a harbour"], out_dir=str(tmp_path / "maps"),
                options={"threshold": 0.4})  # fmt: skip
    reply = worker.out.wait_for("l", timeout=120)
    monkeypatch.undo()
    assert reply["event"] == "result", reply
    result = reply["result"]
    assert (result["scene"], result["href"]) == (record["scene_id"], record["href"])
    (answer,) = result["results"]
    assert answer["query"] == "a harbour" and answer["threshold"] == 0.4
    assert Path(answer["heatmap"]).parent == tmp_path / "maps"
    (fresh,) = localize(record["href"], "a harbour", tiny_model,
                        scales=tuple(record["scales_px"]), index_dir=tmp_path / "fresh")  # fmt: skip
    assert result["windows"] == fresh.windows
    assert result["scales"] == [int(size) for size in record["scales_px"]] == [32, 64]
    with rasterio.open(answer["heatmap"]) as src:
        assert src.transform == fresh.transform and src.crs == fresh.crs
        np.testing.assert_allclose(src.read(1), fresh.heatmap, atol=1e-5, equal_nan=True)
    assert gpd.read_file(answer["polygons"]).crs == fresh.crs


def test_cancelled_build_keeps_finished_scenes_and_resumes(
    worker: _Lines, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for seed in range(8):
        make_scene(folder / f"tile_{seed}.tif", seed, size=192)
    root = tmp_path / "c.dgtrs-catalog"
    worker.send("b", "catalog_build", sources=[str(folder)], out=str(root),
                model=str(tiny_checkpoint), options={**BUILD, "batch_size": 2})  # fmt: skip
    worker.out.wait_for("b", "progress")
    with worker.out.cond:  # wait for the first batch of windows, then cancel
        worker.out.cond.wait_for(
            lambda: any(e["id"] == "b" and e.get("fraction", 0) > 0 for e in worker.out.events)
        )
    worker.send("c", "cancel", target="b")
    error = worker.out.wait_for("b", timeout=120)
    assert error["event"] == "error" and error["error"]["type"] == "Cancelled", error
    parts = list((root / "parts").glob("*.parquet"))
    assert len(parts) < 8
    assert not [p for p in (root / "parts").iterdir() if p.suffix != ".parquet"]
    resumed = build(worker, folder, root, tiny_checkpoint, "b2")
    assert resumed["unchanged"] == len(parts) and resumed["indexed"] == 8 - len(parts)
    assert resumed["scenes"] == 8


def test_bad_catalog_requests_are_errors(
    worker: _Lines, scenes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    worker.send("1", "catalog_search", catalog=str(tmp_path))
    assert worker.out.wait_for("1")["error"]["type"] == "BadRequest"
    worker.send("2", "catalog_search", catalog=str(tmp_path), queries=["x"],
                options={"topp": 3})  # fmt: skip
    error = worker.out.wait_for("2")["error"]
    assert error["type"] == "InputError" and "topp" in error["message"]
    root = tmp_path / "c.dgtrs-catalog"
    build(worker, scenes, root, tiny_checkpoint)
    worker.send("3", "catalog_localize", catalog=str(root), scene="nope", queries=["x"])
    error = worker.out.wait_for("3", timeout=60)["error"]
    assert error["type"] == "InputError" and "'nope'" in error["message"]
    worker.send("4", "catalog_search", catalog=str(tmp_path / "none"), queries=["x"])
    assert worker.out.wait_for("4", timeout=60)["event"] == "error"
