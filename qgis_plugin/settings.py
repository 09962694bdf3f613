"""The plugin's settings (QGIS settings under the plugin's name), with their defaults."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsApplication

from .backend.environment import default_venv_dir, detect_python
from .tools import get_setting, set_setting

#: The model the dock and the algorithms start with.
DEFAULT_MODEL = "dgtrs-clip-vit-b-16"
#: Models offered in the pickers; any checkpoint path works too.
MODELS = [
    "dgtrs-clip-vit-b-16",
    "dgtrs-clip-vit-l-14",
    "georsclip-vit-b-32",
    "remoteclip-vit-b-32",
    "openai-vit-b-16",
]
DEVICES = ["auto", "cpu", "cuda"]


def profile_dir() -> str:
    """Return the active QGIS profile folder."""
    return QgsApplication.qgisSettingsDirPath()


def configured_python() -> str:
    """Return the interpreter set by the user ("" when unset)."""
    return str(get_setting("backend/python", "", str) or "")


def set_configured_python(path: str) -> None:
    """Set the backend interpreter ("" to auto-detect)."""
    set_setting("backend/python", path)


def backend_python() -> Optional[str]:
    """Return the backend interpreter: configured, or auto-detected; None when none is found."""
    return detect_python(configured_python(), profile_dir())


def backend_venv_dir():
    """Return the folder where "Set up backend" creates the venv."""
    return default_venv_dir(profile_dir())


def model() -> str:
    """Return the last model used (a registry name or a checkpoint path)."""
    return str(get_setting("model", DEFAULT_MODEL, str) or DEFAULT_MODEL)


def set_model(value: str) -> None:
    """Remember the model for the next session."""
    set_setting("model", value)


def device() -> str:
    """Return the device for the engine: auto, cpu or cuda."""
    value = str(get_setting("backend/device", "auto", str) or "auto")
    return value if value in DEVICES else "auto"


def set_device(value: str) -> None:
    """Remember the device."""
    set_setting("backend/device", value)


def results_dir() -> str:
    """Return the folder where the dock writes heatmaps and polygons."""
    default = str(default_venv_dir(profile_dir()).parent / "results")
    return str(get_setting("results_dir", default, str) or default)
