"""Catalogs in a real QGIS: Build catalog and Search catalog (Processing), the dock's Catalog tab,
and "Localize here" mapping a result's scene from the catalog's stored embeddings.

The ranked layers are compared with the catalog engine called in this process on the same
catalog (``Catalog.search``); the scene's heatmap with its extent in the scene layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import shapely
from qgis.core import (
    QgsApplication,
    QgsGraduatedSymbolRenderer,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from test_catalog_cli import assert_same_catalog, cli, make_scene
from test_qgis_plugin import wait_until

from dgtrs_geo.catalog import Catalog
from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import manager
from qgis_plugin.layers import RUN_PROPERTY, find_group

pytestmark = pytest.mark.qgis

CPU = 1  # index of "cpu" in the algorithms' device choices


@pytest.fixture(scope="module")
def plugin(qgis_iface, qgis_processing):
    """The plugin, with this test interpreter (dgtrs-geo installed) as its backend."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGTRS_GEO_PYTHON", sys.executable)
        instance = classFactory(qgis_iface)
        instance.initGui()
        yield instance
        instance.unload()
        manager.shutdown()


@pytest.fixture(scope="module")
def catalog(plugin, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scenes in two CRSs, built into a catalog by the Build catalog algorithm."""
    import processing

    folder = tmp_path_factory.mktemp("scenes")
    for seed in range(2):
        make_scene(folder / f"tile_{seed}.tif", seed)
    make_scene(folder / "tile_32632.tif", 5, crs="EPSG:32632")
    root = tmp_path_factory.mktemp("catalogs") / "c.dgtrs-catalog"
    out = processing.run(
        "dgtrsgeo:buildcatalog",
        {"FOLDER": str(folder), "MODEL": str(tiny_checkpoint), "DEVICE": CPU,
         "SCALES": "32, 64", "SCALE_UNIT": 1, "OUTPUT": str(root)},
    )  # fmt: skip
    assert (out["SCENES"], out["FAILED"]) == (3, 0)
    assert Path(out["OUTPUT"]) == root.resolve()
    return root


def scene_scales(root: Path, scene: str) -> list:
    scenes = Catalog.open(root).index.scenes
    return list(scenes[scenes["scene_id"] == scene].iloc[0]["scales_px"])


def engine_search(root: Path, query: str, top: int, tiny_model, **filters):
    return Catalog.open(root).search(query, top=top, model=tiny_model, **filters)


def assert_layer_is(layer: QgsVectorLayer, expected) -> None:
    """The layer holds the engine's rows, in score order, with the same EPSG:4326 geometry."""
    assert layer.isValid() and layer.crs().authid() == "EPSG:4326"
    features = list(layer.getFeatures())
    assert len(features) == len(expected) > 0
    scores = [f["score"] for f in features]
    assert scores == sorted(scores, reverse=True)
    for feature, want in zip(features, expected.itertuples(), strict=True):
        assert (feature["rank"], feature["scene"], feature["href"]) == (
            want.rank, want.scene, want.href,
        )  # fmt: skip
        assert feature["score"] == pytest.approx(want.score, abs=1e-5)
        geometry = shapely.from_wkt(feature.geometry().asWkt(12))
        assert geometry.equals_exact(want.geometry, 1e-9)
    assert layer.fields().indexOf("date") >= 0


def test_search_algorithm_gives_the_engines_ranked_windows(plugin, catalog, tiny_model) -> None:
    import processing

    found = processing.run(
        "dgtrsgeo:searchcatalog",
        {"CATALOG": str(catalog), "QUERY": "a road", "TOP": 5, "DEVICE": CPU,
         "OUTPUT": "memory:"},
    )["OUTPUT"]  # fmt: skip
    assert_layer_is(found, engine_search(catalog, "a road", 5, tiny_model))


def test_search_algorithm_within_an_extent(plugin, catalog, tiny_model) -> None:
    import processing

    everything = engine_search(catalog, "a road", 10, tiny_model)
    box = everything.geometry.iloc[0].bounds
    # The box leaves some of the best places out, so the filter has something to do.
    assert not all(g.intersects(shapely.box(*box)) for g in everything.geometry)
    extent = f"{box[0]},{box[2]},{box[1]},{box[3]} [EPSG:4326]"
    found = processing.run(
        "dgtrsgeo:searchcatalog",
        {"CATALOG": str(catalog), "QUERY": "a road", "TOP": 3, "DEVICE": CPU,
         "EXTENT": extent, "OUTPUT": "memory:"},
    )["OUTPUT"]  # fmt: skip
    assert_layer_is(found, engine_search(catalog, "a road", 3, tiny_model, bbox=box))
    assert all(
        shapely.from_wkt(f.geometry().asWkt(12)).intersects(shapely.box(*box))
        for f in found.getFeatures()
    )


@pytest.fixture
def panel(plugin, catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    QgsProject.instance().clear()
    dock = plugin.dock
    dock.device_combo.setCurrentText("cpu")
    panel = dock.catalog_panel
    panel.set_catalog(str(catalog))
    yield panel
    QgsProject.instance().clear()


def search(panel, query: str, top: int) -> None:
    panel.query.setPlainText(query)
    panel.top.setValue(top)
    assert panel.search() is not None, panel.dock.status.text()
    wait_until(lambda: panel.task is None)
    assert panel.layer is not None, panel.dock.status.text()


def test_catalog_tab_adds_a_ranked_layer_styled_by_score(panel, catalog, tiny_model) -> None:
    search(panel, "a harbour", 6)
    expected = engine_search(catalog, "a harbour", 6, tiny_model)
    layer = panel.layer
    assert_layer_is(layer, expected)
    assert layer.name() == "a harbour (catalog)"
    assert QgsProject.instance().mapLayer(layer.id()) is layer
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "score"
    lowest = min(r.lowerValue() for r in renderer.ranges())
    highest = max(r.upperValue() for r in renderer.ranges())
    assert lowest == pytest.approx(expected["score"].min())
    assert highest == pytest.approx(expected["score"].max())
    assert layer.customProperty(RUN_PROPERTY)  # Clear results removes it with the rest
    table = panel.table
    assert table.rowCount() == 6
    assert [table.item(i, 2).text() for i in range(6)] == list(expected["scene"])
    assert panel.dock.status.text().startswith("6 result(s) in ")


def test_localize_here_maps_the_scene_from_its_stored_embeddings(panel, catalog) -> None:
    search(panel, "a harbour", 4)
    row = panel.rows[2]
    panel.table.selectRow(2)
    assert panel.localize_selected() is not None
    wait_until(lambda: panel.task is None)
    record = panel.dock.history[0]
    assert record.get("heatmap"), panel.dock.status.text()
    assert (record["scene"], record["query"]) == (row["scene"], "a harbour")
    # The scene's window sizes, in pixels, name the group and the heatmap's metadata.
    assert record["scales"] == [int(s) for s in scene_scales(catalog, row["scene"])]
    assert record["model"] == Catalog.open(catalog).store.model_id
    scenes = [
        layer for layer in QgsProject.instance().mapLayers().values()
        if isinstance(layer, QgsRasterLayer) and layer.source() == row["href"]
    ]  # fmt: skip
    assert len(scenes) == 1
    scene = scenes[0]
    group = find_group(record["id"])
    assert group.name().endswith(", 32/64 px)")
    heat = next(
        n.layer() for n in group.findLayers() if isinstance(n.layer(), QgsRasterLayer)
    )  # fmt: skip
    assert heat.source() == record["heatmap"]
    assert heat.crs() == scene.crs()
    a, b = heat.extent(), scene.extent()
    cell = heat.rasterUnitsPerPixelX()
    assert a.xMinimum() == pytest.approx(b.xMinimum()) and a.yMaximum() == pytest.approx(
        b.yMaximum()
    )
    assert 0 <= a.xMaximum() - b.xMaximum() < cell and 0 <= b.yMinimum() - a.yMinimum() < cell
    # A double-click on another row maps that row's scene too (a second group).
    other = next(i for i, r in enumerate(panel.rows) if r["scene"] != row["scene"])
    panel.table.itemDoubleClicked.emit(panel.table.item(other, 0))
    wait_until(lambda: panel.task is None)
    assert panel.dock.history[0]["scene"] == panel.rows[other]["scene"]
    assert find_group(panel.dock.history[0]["id"]) is not None


def test_catalog_tab_refuses_a_missing_folder_and_an_empty_query(panel, tmp_path) -> None:
    panel.set_catalog(str(tmp_path / "nowhere"))
    panel.query.setPlainText("a road")
    assert panel.search() is None and "catalog folder" in panel.dock.status.text()
    panel.set_catalog(str(tmp_path))
    panel.query.setPlainText("  ")
    assert panel.search() is None and "Type a query" in panel.dock.status.text()


def test_cancelled_build_task_stops_keeps_whole_parts_and_resumes(
    plugin, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Build catalog in a background task, as the toolbox runs it; Cancel; then run it again."""
    import processing

    folder = tmp_path / "many"
    folder.mkdir()
    for seed in range(10):
        make_scene(folder / f"tile_{seed}.tif", seed, size=256)
    root = tmp_path / "c.dgtrs-catalog"
    params = {"FOLDER": str(folder), "MODEL": str(tiny_checkpoint), "DEVICE": CPU,
              "SCALES": "32, 64", "SCALE_UNIT": 1, "OUTPUT": str(root)}  # fmt: skip
    algorithm = QgsApplication.processingRegistry().algorithmById("dgtrsgeo:buildcatalog")
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    task = QgsProcessingAlgRunnerTask(algorithm, params, context, feedback)
    outcome: dict = {}
    task.executed.connect(lambda ok, results: outcome.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    # Cancel once the first scene is written: encoding is under way, most scenes are to come.
    wait_until(lambda: len(list((root / "parts").glob("*.parquet"))) > 0 or outcome, 300)
    assert not outcome, "the build ended before it could be cancelled"
    task.cancel()  # what the dialog's Cancel button does: the task's feedback is cancelled
    stopped = wait_until(lambda: bool(outcome), 60)
    assert outcome["ok"] is False
    # The worker stops at its next batch, or is killed 0.8 s after the cancel; 5 s leaves room
    # for a loaded machine, and the rest of the build (most scenes) would take longer.
    assert stopped < 5.0, f"the build took {stopped:.1f} s to stop"
    parts = {p.name: p.stat().st_mtime_ns for p in (root / "parts").glob("*.parquet")}
    assert 0 < len(parts) < 10
    print(f"Build catalog stopped {stopped:.2f} s after Cancel, {len(parts)} of 10 scenes kept")
    leftovers = [p for p in (root / "parts").iterdir() if p.suffix != ".parquet"]
    assert not leftovers and not list(root.glob(".*.tmp"))  # no half-written file anywhere

    out = processing.run("dgtrsgeo:buildcatalog", params)
    assert (out["SCENES"], out["FAILED"]) == (10, 0)
    # The scenes finished before the cancel were kept, not encoded again.
    assert {n: (root / "parts" / n).stat().st_mtime_ns for n in parts} == parts
    index = Catalog.open(root).index
    assert sorted(index.scenes["href"]) == sorted(str(p) for p in folder.glob("*.tif"))
    assert index.scenes["scene_id"].is_unique and len(index.scenes) == 10
    # Each scene exactly once: the same rows and embeddings as one uninterrupted build. That
    # build runs in its own process, as the plugin's do: Lightning's predict loop restores every
    # signal handler it saw through Python, which resets Qt's SIGCHLD handler in this QGIS
    # process, after which QProcess (the set-up dialog's) never learns that a child exited.
    reference = tmp_path / "ref.dgtrs-catalog"
    done = cli("catalog", "index", str(folder), "-o", str(reference), "--model",
               str(tiny_checkpoint), "--scales", "32", "64", "--scale-unit", "px", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_catalog(root, reference)
