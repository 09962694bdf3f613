"""Start-up and feedback in a real QGIS: the worker starts on demand, the dock shows the stage,
the time shown includes the start, stale errors go; requests in either worker protocol."""

from __future__ import annotations

import sys
import time

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from test_qgis_plugin import wait_until, write_geotiff

from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import manager
from qgis_plugin.backend.protocol import Run, stage_of, worker_params

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def plugin(qgis_iface, qgis_processing):
    """The plugin, with this test interpreter (dgtrs-geo installed) as its backend."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGTRS_GEO_PYTHON", sys.executable)
        manager.shutdown()
        instance = classFactory(qgis_iface)
        instance.initGui()
        yield instance
        instance.unload()
        manager.shutdown()


@pytest.fixture
def dock(plugin, tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    monkeypatch.setattr(plugin_settings, "index_dir", lambda: str(tmp_path / "indexes"))
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    QgsProject.instance().addMapLayer(layer)
    dock = plugin.dock
    dock.layer_combo.setLayer(layer)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.window_sizes.set_sizes("16, 32")
    yield dock
    QgsProject.instance().clear()


def test_the_worker_starts_only_when_a_job_needs_it(plugin) -> None:
    manager.shutdown()
    plugin.dock.show()
    start = time.monotonic()
    while time.monotonic() - start < 1.5:
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert manager.current_client() is None
    # The token count does not start it either.
    plugin.dock.query.setPlainText("a bright square")
    plugin.dock.refresh_token_count()
    assert manager.current_client() is None
    assert plugin.dock.token_label.text() == "? / 248 tokens (backend not started)"
    plugin.dock.hide()


def test_the_dock_shows_each_stage_and_the_time_with_the_start(dock) -> None:
    manager.shutdown()
    seen = []
    show = dock._show_progress

    def spy(fraction, message, stage) -> None:
        show(fraction, message, stage)
        seen.append((stage, dock.status.text(), dock.progress.maximum()))

    dock._show_progress = spy
    try:
        dock.query.setPlainText("a bright square")
        task = dock.run()
        task.progressed.disconnect()
        task.progressed.connect(spy)
        wait_until(lambda: dock.task is None)
    finally:
        del dock._show_progress
    first = dock.history[0]
    texts = [text for _, text, _ in seen]
    assert texts[0] == "Starting backend\u2026"
    # While the backend starts the bar is "busy", not frozen at 0 %.
    assert seen[0][2] == 0
    assert "Loading model\u2026" in texts
    assert any(text.startswith("Encoding windows\u2026 encoded") for text in texts), texts
    assert texts.index("Starting backend\u2026") < texts.index("Loading model\u2026")
    # The time shown is the user's wait: start of the backend included.
    assert first["start_seconds"] > 0.5
    assert first["seconds"] > first["start_seconds"]
    assert dock.status.text().startswith(
        "Done in {:.1f} s (backend start {:.1f} s)".format(first["seconds"], first["start_seconds"])
    )
    assert dock.progress.maximum() == 100 and dock.progress.value() == 100

    dock.query.setPlainText("a dark corner")
    dock.run()
    wait_until(lambda: dock.task is None)
    second = dock.history[0]
    assert second["start_seconds"] == 0 and second["seconds"] < first["seconds"]
    assert "backend start" not in dock.status.text()


def test_downloading_weights_shows_its_percentage(dock) -> None:
    dock._show_progress(0.42, "downloading dgtrs-clip-vit-b-16.pt", "downloading")
    assert dock.status.text() == "Downloading weights 42 %"
    assert dock.progress.value() == 42 and dock.progress.maximum() == 100


def test_a_stale_error_goes_once_the_backend_works(dock, monkeypatch) -> None:
    from qgis_plugin.gui.settings_dialog import BackendSettingsDialog

    manager.shutdown()
    with monkeypatch.context() as patch:
        patch.setattr(plugin_settings, "backend_python", lambda: None)
        dock.query.setPlainText("a bright square")
        dock.run()
        wait_until(lambda: dock.task is None, timeout=10)
    assert dock.status.text().startswith("No dgtrs-geo backend found")
    assert "color" in dock.status.styleSheet()
    # Diagnostics starts the backend: the dock's error is replaced as soon as it answers.
    dialog = BackendSettingsDialog()
    task = dialog.show_diagnostics()
    wait_until(lambda: task.status() in (task.TaskStatus.Complete, task.TaskStatus.Terminated))
    wait_until(lambda: not dock.status.text().startswith("No dgtrs-geo"), timeout=5)
    assert dock.status.text() == "Backend ready (dgtrs-geo 0.1.0)"
    assert dock.status.styleSheet() == ""


# --- requests in both worker protocols --------------------------------------------------------


RUN = Run(
    raster="/data/scene.tif",
    model="tiny.pt",
    queries=["boats"],
    options={
        "device": "cpu",
        "bands": None,
        "scales": [16, 32],
        "scale_unit": "m",
        "aoi": [1, 2, 3, 4],
        "index_dir": "/idx",
        "threshold": 0.4,
        "out_dir": "/out",
        "outputs": ["heatmap", "polygons"],
    },
)


def test_requests_use_options_for_a_worker_that_lists_them() -> None:
    schema = {"scales": [256], "scale_unit": "px", "aoi": None, "index_dir": None, "device": "auto",
              "threshold": None, "out_dir": None, "outputs": ["heatmap"], "bands": None}  # fmt: skip
    params = worker_params("localize", RUN, {"version": "0.1.0", "options": schema})
    assert params == {
        "raster": "/data/scene.tif",
        "model": "tiny.pt",
        "queries": ["boats"],
        "options": {
            "device": "cpu",
            "scales": [16, 32],
            "scale_unit": "m",
            "aoi": [1, 2, 3, 4],
            "index_dir": "/idx",
            "threshold": 0.4,
            "out_dir": "/out",
            "outputs": ["heatmap", "polygons"],
        },
    }
    # An option this engine does not know is left out rather than refused.
    assert "outputs" not in worker_params("index", RUN, {"options": {"scales": [256]}})["options"]


def test_requests_are_flat_for_a_worker_of_the_first_protocol() -> None:
    assert worker_params("localize", RUN, {"version": "0.1.0"}) == {
        "raster": "/data/scene.tif",
        "model": "tiny.pt",
        "queries": ["boats"],
        "device": "cpu",
        "scales": [16, 32],
        "scale_unit": "m",
        "extent": [1, 2, 3, 4],
        "index_dir": "/idx",
        "threshold": 0.4,
        "output_dir": "/out",
    }
    assert set(worker_params("index", RUN, {})) == {
        "raster", "model", "device", "scales", "scale_unit", "extent", "index_dir",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("event", "stage"),
    [
        ({"message": "encoded 4/7 windows", "stage": "encoding"}, "encoding"),
        ({"message": "loading model tiny.pt"}, "loading-model"),
        ({"message": "encoded 4/7 windows"}, "encoding"),
        ({"message": "encoding 7 windows of scene.tif"}, "encoding"),
        ({"message": "scoring 1 query(ies)"}, "scoring"),
        ({"message": "done"}, ""),
    ],
)
def test_stages_are_read_or_inferred_from_old_messages(event, stage) -> None:
    assert stage_of(event) == stage
