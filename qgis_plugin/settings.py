"""The plugin's settings (QGIS settings under the plugin's name), with their defaults."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsApplication

from .backend.environment import Backend, default_venv_dir, detect_backend
from .backend.install import SetupOptions
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


def backend() -> Backend:
    """Return the backend interpreter in use and the state of the set-up venv."""
    return detect_backend(configured_python(), profile_dir())


def backend_python() -> Optional[str]:
    """Return the backend interpreter: configured, or auto-detected; None when none is found."""
    return backend().python


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


def index_dir() -> str:
    """Return the folder where embedding indexes are kept (not next to the rasters)."""
    default = str(default_venv_dir(profile_dir()).parent / "indexes")
    return str(get_setting("index_dir", "", str) or default)


def set_index_dir(path: str) -> None:
    """Choose the index folder ("" for the default in the QGIS profile)."""
    set_setting("index_dir", path)


def setup_options(cuda: Optional[bool] = None) -> SetupOptions:
    """Return the saved "Set up backend" options (``cuda`` overrides the saved choice)."""
    return SetupOptions(
        venv_dir=backend_venv_dir(),
        cuda=bool(get_setting("setup/cuda", False, bool)) if cuda is None else cuda,
        base_python=str(get_setting("setup/base_python", "", str) or ""),
        reuse_packages=bool(get_setting("setup/reuse_packages", False, bool)),
        pip_options=str(get_setting("setup/pip_options", "", str) or ""),
        torch_index=str(get_setting("setup/torch_index", "", str) or ""),
    )


def set_setup_options(options: SetupOptions) -> None:
    """Remember the "Set up backend" options."""
    set_setting("setup/cuda", bool(options.cuda))
    set_setting("setup/base_python", options.base_python)
    set_setting("setup/reuse_packages", bool(options.reuse_packages))
    set_setting("setup/pip_options", options.pip_options)
    set_setting("setup/torch_index", options.torch_index)
