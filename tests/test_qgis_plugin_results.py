"""Result layers in a real QGIS: runs told apart, history by id and with the project, Clear results,
the heatmap's legend and metadata, polygon classes, GeoPackage version, Processing styling, and
the rendered heatmap's transparency."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsLayerTreeModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from test_qgis_plugin import wait_until, write_geotiff

from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import manager
from qgis_plugin.layers import RUN_PROPERTY, TRANSPARENT_BELOW, find_group, style_polygons

pytestmark = pytest.mark.qgis


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


@pytest.fixture
def dock(plugin, tmp_path, monkeypatch, tiny_checkpoint):
    """The dock on a fresh project with a 64 x 64 scene, the tiny model and tmp folders."""
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    monkeypatch.setattr(plugin_settings, "index_dir", lambda: str(tmp_path / "indexes"))
    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    QgsProject.instance().addMapLayer(layer)
    dock = plugin.dock
    dock.layer_combo.setLayer(layer)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    yield dock
    QgsProject.instance().clear()


def find(dock, query: str, sizes: str) -> dict:
    """Run ``query`` from the dock with window ``sizes``; return its history record."""
    dock.window_sizes.set_sizes(sizes)
    dock.query.setPlainText(query)
    assert dock.run() is not None, dock.status.text()
    wait_until(lambda: dock.task is None)
    assert dock.status.text().startswith("Done in"), dock.status.text()
    return dock.history[0]


# --- groups and history ---------------------------------------------------------------------


def test_two_runs_of_one_query_are_two_groups_and_a_click_shows_the_right_one(
    dock, qgis_iface
) -> None:
    first = find(dock, "a bright square", "16, 32")
    second = find(dock, "a bright square", "32")
    assert first["id"] != second["id"]
    groups = [find_group(first["id"]), find_group(second["id"])]
    names = [group.name() for group in groups]
    assert names[0] != names[1]
    clock = first["time"][11:19]
    assert names[0] == f"a bright square ({clock}, 16/32 px)"
    assert names[1].startswith("a bright square (") and names[1].endswith(", 32 px)")
    for group in groups:
        group.setItemVisibilityChecked(False)
    # The history's second row is the first run (newest first): clicking it shows that group.
    item = dock.history_list.item(1)
    assert item.text().startswith(names[0])
    dock.show_history_item(item)
    assert groups[0].isVisible() and not groups[1].isVisible()
    heatmap = groups[0].findLayers()[-1].layer()
    assert qgis_iface.activeLayer() is heatmap
    assert heatmap.source() == first["heatmap"]


def test_history_is_saved_with_the_project(dock, tmp_path) -> None:
    record = find(dock, "a bright square", "16, 32")
    project = QgsProject.instance()
    path = tmp_path / "session.qgz"
    assert project.write(str(path))
    project.clear()
    assert dock.history == [] and dock.history_list.count() == 0
    assert project.read(str(path))
    assert [r["id"] for r in dock.history] == [record["id"]]
    assert dock.history[0] == record
    assert dock.history_list.count() == 1
    # The group keeps its run id in the project file, so the history finds it again.
    group = find_group(record["id"])
    assert group is not None and group.findLayers()
    group.setItemVisibilityChecked(False)
    dock.show_history_item(dock.history_list.item(0))
    assert group.isVisible()


def test_clear_results_removes_layers_and_on_request_their_files(dock) -> None:
    record = find(dock, "a bright square", "16, 32")
    base = [
        layer for layer in QgsProject.instance().mapLayers().values() if layer.name() == "scene"
    ]
    assert Path(record["heatmap"]).is_file() and Path(record["out_dir"]).is_dir()
    assert dock.clear_results(delete_files=False) == 2
    assert list(QgsProject.instance().mapLayers().values()) == base
    assert find_group(record["id"]) is None
    assert Path(record["heatmap"]).is_file() and dock.history_list.count() == 1
    # Still in the history: a click brings the layers back from their files.
    dock.show_history_item(dock.history_list.item(0))
    assert len(find_group(record["id"]).findLayers()) == 2
    assert dock.clear_results(delete_files=True) == 2
    assert not Path(record["out_dir"]).exists()
    assert dock.history == [] and dock.history_list.count() == 0
    assert list(QgsProject.instance().mapLayers().values()) == base


# --- what the heatmap says --------------------------------------------------------------------


def test_heatmap_legend_metadata_and_tooltip_say_what_the_values_are(dock) -> None:
    record = find(dock, "a bright square", "16, 32")
    heatmap = find_group(record["id"]).findLayers()[-1].layer()
    assert heatmap.name() == "heatmap (relative match, 0-1)"
    renderer = heatmap.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0.0, 1.0)
    legend = renderer.shader().rasterShaderFunction().legendSettings()
    assert legend.useContinuousLegend()
    assert (legend.minimumLabel(), legend.maximumLabel()) == ("0 (weakest)", "1 (best match)")
    raw = f"{record['score_max']:.4f}"
    model = QgsLayerTreeModel(QgsProject.instance().layerTreeRoot())
    node = QgsProject.instance().layerTreeRoot().findLayer(heatmap.id())
    tooltip = model.data(model.node2index(node), Qt.ItemDataRole.ToolTipRole)
    assert "a bright square: heatmap (relative match, 0-1)" in tooltip
    assert "Relative match, 0-1" in tooltip and raw in tooltip
    assert heatmap.metadata().abstract() == heatmap.abstract()
    # The worker sends the raw range the map was scaled from: lowest and best window cosine.
    low = record["score_min"]
    assert low is not None and low < record["score_max"]
    expected = f"Raw cosine similarity of the windows: {low:.4f} to {raw}."
    assert expected in heatmap.metadata().abstract()
    # The tags the engine wrote agree: a min-max map.
    with rasterio.open(record["heatmap"]) as src:
        assert src.tags()["normalise"] == "minmax"


def test_heatmap_metadata_gives_the_raw_cosine_range_when_the_engine_sends_it(dock) -> None:
    from qgis_plugin.layers import describe_heatmap

    record = find(dock, "a bright square", "16, 32")
    heatmap = QgsRasterLayer(record["heatmap"], "h")
    text = describe_heatmap(heatmap, dict(record, score_min=0.1, score_max=0.25))
    assert "Raw cosine similarity of the windows: 0.1000 to 0.2500." in text
    assert heatmap.abstract() == heatmap.metadata().abstract() == text
    cosine = describe_heatmap(heatmap, dict(record, normalise="cosine"))
    assert "Raw cosine similarity of each cell" in cosine and "Relative match" not in cosine
    assert heatmap.title() == "a bright square: heatmap (cosine similarity)"


def _polygons(values) -> QgsVectorLayer:
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=score_max:double", "p", "memory")
    features = []
    for i, value in enumerate(values):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(i, 0, i + 1, 1)))
        feature.setAttribute("score_max", value)
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        ([1.0], ["1.000"]),
        ([1.0, 1.0, 1.0, 1.0], ["1.000"]),
        ([0.9991, 0.9994, 1.0], ["0.9991 - 0.9994", "0.9994 - 0.9997", "0.9997 - 1.0000"]),
        ([0.6, 1.0], ["0.600 - 0.800", "0.800 - 1.000"]),
        (
            [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            ["0.500 - 0.625", "0.625 - 0.750", "0.750 - 0.875", "0.875 - 1.000"],
        ),
    ],
)
def test_polygon_classes_never_read_alike(qgis_app, values, labels) -> None:
    layer = _polygons(values)
    style_polygons(layer)
    ranges = layer.renderer().ranges()
    assert [r.label() for r in ranges] == labels
    # Every polygon falls in a class (none drawn without a symbol).
    from qgis.core import QgsRenderContext

    context = QgsRenderContext()
    layer.renderer().startRender(context, layer.fields())
    try:
        assert all(layer.renderer().symbolForFeature(f, context) for f in layer.getFeatures())
    finally:
        layer.renderer().stopRender(context)


def test_engine_geopackage_opens_in_qgis_gdal_without_the_version_warning(dock, tmp_path) -> None:
    from osgeo import gdal

    record = find(dock, "a bright square", "16, 32")
    assert sqlite3.connect(record["polygons"]).execute("pragma user_version").fetchone() == (10200,)
    messages = []
    gdal.PushErrorHandler(lambda level, number, text: messages.append(text))
    try:
        assert gdal.OpenEx(record["polygons"], gdal.OF_VECTOR) is not None
        # The check can fail: the same file as GeoPackage 1.4 makes this GDAL warn.
        newer = tmp_path / "newer.gpkg"
        newer.write_bytes(Path(record["polygons"]).read_bytes())
        with sqlite3.connect(newer) as db:
            db.execute("pragma user_version = 10400")
        assert gdal.OpenEx(str(newer), gdal.OF_VECTOR) is not None
    finally:
        gdal.PopErrorHandler()
    assert gdal.VersionInfo().startswith("306")  # QGIS 3.22's GDAL 3.6
    assert not [m for m in messages if record["polygons"] in m], messages
    assert any("user_version" in m and str(newer) in m for m in messages), messages


# --- Processing outputs -------------------------------------------------------------------------


def test_processing_outputs_are_styled_and_named_after_the_query(
    plugin, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    import processing

    monkeypatch.setattr(plugin_settings, "index_dir", lambda: str(tmp_path / "indexes"))
    QgsProject.instance().clear()
    scene = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    QgsProject.instance().addMapLayer(scene)
    processing.runAndLoadResults(
        "dgtrsgeo:localize",
        {
            "INPUT": scene,
            "QUERY": "a bright square",
            "MODEL": str(tiny_checkpoint),
            "DEVICE": 1,
            "SCALES": "16, 32",
            "OUTPUT_HEATMAP": str(tmp_path / "heat.tif"),
            "OUTPUT_POLYGONS": str(tmp_path / "polygons.gpkg"),
        },
    )
    layers = {
        layer.name(): layer
        for layer in QgsProject.instance().mapLayers().values()
        if layer.customProperty(RUN_PROPERTY)
    }
    assert sorted(layers) == [
        "a bright square: heatmap (relative match, 0-1)",
        "a bright square: polygons (score \u2265 0.5)",
    ]
    heatmap = layers["a bright square: heatmap (relative match, 0-1)"]
    assert isinstance(heatmap.renderer(), QgsSingleBandPseudoColorRenderer)
    assert (
        heatmap.renderer().shader().rasterShaderFunction().colorRampItemList()[0].color.alpha() == 0
    )
    assert "Relative match, 0-1" in heatmap.abstract()
    polygons = layers["a bright square: polygons (score \u2265 0.5)"]
    assert polygons.renderer().type() == "graduatedSymbol"
    QgsProject.instance().clear()


# --- what the heatmap looks like ----------------------------------------------------------------


def test_rendered_heatmap_is_transparent_where_scores_are_low(dock) -> None:
    """Render the heatmap alone on its own grid: each pixel is one cell of the GeoTIFF."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage

    record = find(dock, "a bright square", "16, 32")
    heatmap = find_group(record["id"]).findLayers()[-1].layer()
    with rasterio.open(record["heatmap"]) as src:
        values = src.read(1)
    settings = QgsMapSettings()
    settings.setLayers([heatmap])
    settings.setDestinationCrs(heatmap.crs())
    settings.setOutputSize(QSize(heatmap.width(), heatmap.height()))
    settings.setExtent(heatmap.extent())
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    settings.setOutputImageFormat(QImage.Format.Format_ARGB32)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    assert (image.width(), image.height()) == values.shape[::-1]
    alpha = np.array(
        [[QColor.fromRgba(image.pixel(x, y)).alpha() for x in range(image.width())]
         for y in range(image.height())]
    )  # fmt: skip
    low = values < TRANSPARENT_BELOW - 0.02
    high = values > TRANSPARENT_BELOW + 0.02
    assert low.any() and high.any()
    assert (alpha[low] == 0).all()
    assert (alpha[high] > 0).all()
    QgsApplication.processEvents()
