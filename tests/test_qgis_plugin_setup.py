"""The plugin's backend set-up: the engine wheel in the zip, the set-up steps, their failure states,
and engine version checks, in a real QGIS (pytest-qgis) with the real dialog."""

from __future__ import annotations

import configparser
import email.parser
import os
import stat
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from qgis.core import QgsProject, QgsRasterLayer
from test_qgis_plugin import wait_until, write_geotiff

from qgis_plugin import classFactory
from qgis_plugin import settings as plugin_settings
from qgis_plugin.backend import environment, install, manager
from qgis_plugin.backend.client import BackendIncompatible, WorkerClient

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parents[1]


def metadata_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "metadata.txt")
    return parser["general"]["version"]


def fake_wheel(folder: Path, version: str, requires: str = ">=3.11") -> Path:
    """A wheel file with just the METADATA the set-up reads (Requires-Python)."""
    (folder / "engine").mkdir(parents=True, exist_ok=True)
    path = folder / "engine" / f"dgtrs_geo-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"dgtrs_geo-{version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: dgtrs-geo\nVersion: {version}\nRequires-Python: {requires}\n",
        )
    return path


def fake_python(path: Path, version: str) -> Path:
    """An executable that answers like a worker of engine ``version``, then waits."""
    path.write_text(
        "#!/bin/sh\n"
        f'echo \'{{"id": null, "event": "ready", "result": {{"version": "{version}", "pid": 1}}}}\'\n'
        "exec sleep 60\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def profile(tmp_path, monkeypatch):
    """A fresh profile folder, no backend from the environment or PATH, default set-up options."""
    folder = tmp_path / "profile"
    monkeypatch.setattr(plugin_settings, "profile_dir", lambda: str(folder))
    monkeypatch.setattr(plugin_settings, "configured_python", lambda: "")
    saved = {}
    monkeypatch.setattr(
        plugin_settings,
        "setup_options",
        lambda cuda=None: (
            saved.get("options")
            or install.SetupOptions(venv_dir=plugin_settings.backend_venv_dir())
        ),
    )
    monkeypatch.setattr(plugin_settings, "set_setup_options", lambda o: saved.update(options=o))
    monkeypatch.delenv("DGTRS_GEO_PYTHON", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    manager.shutdown()
    yield folder
    manager.shutdown()


@pytest.fixture(scope="module")
def plugin(qgis_iface, qgis_processing):
    instance = classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture
def scene(plugin, tmp_path, monkeypatch):
    """A raster layer chosen in the dock; results go under tmp_path."""
    monkeypatch.setattr(plugin_settings, "results_dir", lambda: str(tmp_path / "results"))
    layer = QgsRasterLayer(str(write_geotiff(tmp_path / "scene.tif")), "scene")
    QgsProject.instance().addMapLayer(layer)
    plugin.dock.layer_combo.setLayer(layer)
    yield layer
    QgsProject.instance().removeAllMapLayers()


# --- the engine wheel in the zip -----------------------------------------------------------------


def test_zip_carries_the_engine_wheel_of_the_plugin_version(tmp_path) -> None:
    from qgis_plugin.package import build

    plugin_zip = build(tmp_path)
    version = metadata_version()
    engine = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version == engine
    name = f"dgtrs_geo_qgis/engine/dgtrs_geo-{version}-py3-none-any.whl"
    archive = zipfile.ZipFile(plugin_zip)
    assert name in archive.namelist()
    wheel_path = tmp_path / "engine.whl"
    wheel_path.write_bytes(archive.read(name))
    wheel = zipfile.ZipFile(wheel_path)
    metadata = email.parser.Parser().parsestr(
        wheel.read(f"dgtrs_geo-{version}.dist-info/METADATA").decode()
    )
    assert metadata["Name"] == "dgtrs-geo" and metadata["Version"] == version
    # Built from this checkout: the worker the plugin talks to is this one, byte for byte.
    assert wheel.read("dgtrs_geo/worker.py") == (ROOT / "dgtrs_geo" / "worker.py").read_bytes()
    assert not [n for n in wheel.namelist() if "__pycache__" in n or n.startswith("tests/")]
    # The checkout is left as it was: the wheel is built from a copy.
    assert not (ROOT / "build").exists()


def test_packaging_refuses_an_engine_of_another_version(monkeypatch, tmp_path) -> None:
    from qgis_plugin import package

    monkeypatch.setattr(package, "engine_version", lambda: "0.2.0")
    with pytest.raises(SystemExit, match=r"engine is 0\.2\.0 .* plugin is 0\.1\.0"):
        package.build(tmp_path)
    assert not list(tmp_path.glob("*.zip*"))


# --- the set-up steps ----------------------------------------------------------------------------


def _torch_step(steps):
    return next(step.argv for step in steps if "torch" in step.argv)


@pytest.mark.parametrize(
    ("platform", "cuda", "index"),
    [
        ("linux", False, install.CPU_INDEX_URL),
        ("linux", True, install.CUDA_INDEX_URL),
        ("win32", False, None),
        ("win32", True, install.CUDA_INDEX_URL),
        ("darwin", False, None),
        ("darwin", True, None),
    ],
)
def test_torch_comes_from_the_index_of_the_wanted_build(tmp_path, platform, cuda, index) -> None:
    wheel = fake_wheel(tmp_path, metadata_version())
    options = install.SetupOptions(
        venv_dir=tmp_path / "venv", cuda=cuda, base_python=sys.executable
    )
    steps = install.setup_steps(options, plugin_dir=tmp_path, platform=platform)
    torch = _torch_step(steps)
    assert torch[1:6] == ["-m", "pip", "install", "torch", "torchvision"]
    if index is None:
        assert "--index-url" not in torch
    else:
        assert torch[torch.index("--index-url") + 1] == index
    # The last step installs the wheel the zip carries; its dependencies come from the index.
    assert steps[-1].argv[-1] == str(wheel) and "--no-deps" not in steps[-1].argv
    assert steps[0].argv[1:3] == ["-m", "venv"] and steps[0].argv[-1] == str(tmp_path / "venv")


def test_reusing_a_base_venv_links_its_packages_and_pip_options_reach_every_pip(tmp_path) -> None:
    fake_wheel(tmp_path, metadata_version())
    options = install.SetupOptions(
        venv_dir=tmp_path / "venv",
        base_python=sys.executable,
        reuse_packages=True,
        pip_options="--no-index --find-links /srv/wheels",
    )
    steps = install.setup_steps(options, plugin_dir=tmp_path, platform="linux")
    assert "--system-site-packages" in steps[0].argv
    # The test interpreter is a venv: its own site-packages are named in a .pth of the new one.
    link = steps[1].argv
    assert link[0] == str(tmp_path / "venv" / "bin" / "python")
    assert str(Path(sys.prefix) / "lib" / "python3.11" / "site-packages") in link
    for step in steps[2:]:
        assert step.argv[-3:] == ["--no-index", "--find-links", "/srv/wheels"]
    # Offline, the PyTorch index is not asked for.
    assert "--index-url" not in _torch_step(steps)


def test_a_python_older_than_the_engine_needs_is_refused_by_name(tmp_path) -> None:
    fake_wheel(tmp_path, metadata_version(), requires=">=3.99")
    options = install.SetupOptions(venv_dir=tmp_path / "venv", base_python=sys.executable)
    with pytest.raises(install.SetupError, match=r"older than 3\.99"):
        install.setup_steps(options, plugin_dir=tmp_path, platform="linux")
    with pytest.raises(install.SetupError, match=r"no Python 3\.99\+ interpreter found on PATH"):
        install.setup_steps(
            install.SetupOptions(venv_dir=tmp_path / "venv"), plugin_dir=tmp_path, platform="linux"
        )


# --- a failed set-up: one state, said the same everywhere ----------------------------------------


def test_failed_setup_is_incomplete_everywhere_and_can_be_retried(
    plugin, profile, scene, monkeypatch
) -> None:
    from qgis_plugin.gui import settings_dialog
    from qgis_plugin.gui.settings_dialog import BackendSettingsDialog

    venv = plugin_settings.backend_venv_dir()
    dialog = BackendSettingsDialog()
    assert dialog.venv_state.text() == "not created yet"
    assert dialog.detected.text().startswith("none")
    dialog.set_up(
        [
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            [sys.executable, "-c", "import sys; sys.exit(3)"],
        ]
    )
    wait_until(lambda: dialog.setup_button.isEnabled() and not dialog.running, timeout=60)
    assert (venv / "bin" / "python").exists()
    state = plugin_settings.backend()
    assert state.venv_state == "incomplete" and state.python is None
    assert "step 2 of 2" in state.venv_detail and "exit code 3" in state.venv_detail
    # The dialog, the manager's message and the dock say the same thing.
    assert dialog.venv_state.text().startswith("incomplete, not used")
    assert state.venv_detail in dialog.venv_state.text()
    assert dialog.detected.text().startswith("none")
    assert dialog.retry_button.isVisibleTo(dialog) and dialog.remove_button.isVisibleTo(dialog)
    message = manager.missing_backend_message()
    assert str(venv) in message and state.venv_detail in message and "Retry set-up" in message
    dock = plugin.dock
    dock.query.setPlainText("anything")
    dock.run()
    wait_until(lambda: dock.task is None, timeout=10)
    assert dock.status.text() == message

    # Retry runs the set-up again (here a quick stand-in for its steps) and the venv is used.
    quick = [
        install.Step("create the venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    ]
    monkeypatch.setattr(settings_dialog, "setup_steps", lambda options: quick)
    dialog.retry_button.click()
    wait_until(lambda: dialog.setup_button.isEnabled() and not dialog.running, timeout=60)
    state = plugin_settings.backend()
    assert state.venv_state == "ready" and state.python == str(venv / "bin" / "python")
    assert state.source == "venv" and dialog.venv_state.text() == f"ready: {venv}"
    assert not dialog.retry_button.isVisibleTo(dialog)
    assert dialog.setup_seconds is not None and dialog.setup_seconds > 0
    # The dock's stale "did not finish" error is replaced once a set-up succeeds.
    wait_until(lambda: "did not finish" not in dock.status.text(), timeout=5)
    assert dock.status.text() == "Backend changed: it starts with the next query."


def test_remove_deletes_the_half_made_venv(plugin, profile) -> None:
    from qgis_plugin.gui.settings_dialog import BackendSettingsDialog

    venv = plugin_settings.backend_venv_dir()
    environment.write_marker(venv, state="failed", detail="step 3 of 4 (install PyTorch) failed")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    dialog = BackendSettingsDialog()
    assert "install PyTorch" in dialog.venv_state.text()
    dialog.remove_button.click()
    assert not venv.exists()
    assert dialog.venv_state.text() == "not created yet"
    assert not dialog.remove_button.isVisibleTo(dialog)
    # Only a folder that looks like a backend venv is deleted.
    venv.mkdir(parents=True)
    (venv / "precious.txt").write_text("x")
    with pytest.raises(OSError, match="does not look like a backend venv"):
        install.remove_venv(venv)
    assert (venv / "precious.txt").exists()


def test_a_hand_made_venv_with_the_engine_counts_as_ready(profile) -> None:
    venv = plugin_settings.backend_venv_dir()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    assert plugin_settings.backend().venv_state == "incomplete"
    (venv / "lib" / "python3.11" / "site-packages" / "dgtrs_geo-0.1.0.dist-info").mkdir(
        parents=True
    )
    assert plugin_settings.backend() == environment.Backend(
        str(venv / "bin" / "python"), "venv", str(venv), "ready", ""
    )


# --- engine version ---------------------------------------------------------------------------


def test_an_engine_of_another_release_is_refused_with_the_fix(tmp_path) -> None:
    client = WorkerClient(
        [str(fake_python(tmp_path / "old-python", "0.0.9"))], expected_version="0.1.0"
    )
    with pytest.raises(BackendIncompatible) as caught:
        client.start()
    message = str(caught.value)
    assert "runs dgtrs-geo 0.0.9" in message and "this plugin (0.1.0)" in message
    assert "Set up backend" in message and "-m pip install dgtrs-geo==0.1.0" in message
    assert not client.alive


def test_a_patch_level_difference_is_used_with_a_note(tmp_path) -> None:
    client = WorkerClient(
        [str(fake_python(tmp_path / "python", "0.1.7"))], expected_version="0.1.0"
    )
    info = client.start()
    assert info["version"] == "0.1.7" and client.alive
    assert "dgtrs-geo 0.1.7" in client.version_note and "0.1.0" in client.version_note
    client.kill()
    same = WorkerClient([str(fake_python(tmp_path / "same", "0.1.0"))], expected_version="0.1.0")
    same.start()
    assert same.version_note == ""
    same.kill()


def test_the_dock_explains_a_version_mismatch_at_start(
    plugin, profile, scene, tmp_path, monkeypatch
) -> None:
    python = fake_python(tmp_path / "python", "0.0.9")
    monkeypatch.setattr(plugin_settings, "backend_python", lambda: str(python))
    dock = plugin.dock
    dock.query.setPlainText("anything")
    dock.run()
    wait_until(lambda: dock.task is None, timeout=20)
    assert "runs dgtrs-geo 0.0.9, but this plugin (0.1.0)" in dock.status.text()
    assert "Set up backend" in dock.status.text()
    assert not os.path.exists(str(tmp_path / "results"))
