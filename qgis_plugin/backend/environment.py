"""Find or create the Python environment that runs the ``dgtrs-geo`` engine.

QGIS's own Python never imports torch: the engine lives in a separate interpreter, found in this
order: the plugin setting, the ``DGTRS_GEO_PYTHON`` environment variable, the venv that "Set up
backend" creates in the QGIS profile, and the interpreter behind a ``dgtrs-geo`` command on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

#: The package "Set up backend" installs (a pip requirement, so a local path works too).
PACKAGE = "dgtrs-geo"
#: PyTorch's wheel index for CUDA builds; the CPU build comes from PyPI.
CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu124"


def venv_python(venv_dir: Path) -> Path:
    """Return the interpreter path inside a venv on this platform."""
    if sys.platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def default_venv_dir(profile_dir: str) -> Path:
    """Return where "Set up backend" creates its venv: ``<profile>/dgtrs_geo/venv``."""
    return Path(profile_dir) / "dgtrs_geo" / "venv"


def base_python() -> Optional[str]:
    """Return a system interpreter that can create the venv, or None."""
    names = ["python3", "python"] if sys.platform != "win32" else ["python", "py"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def detect_python(configured: str, profile_dir: str) -> Optional[str]:
    """Return the backend interpreter to use, or None when none is found.

    Args:
        configured: the interpreter from the plugin settings ("" when unset).
        profile_dir: the QGIS profile folder (holds the venv "Set up backend" makes).

    """
    candidates = [configured, os.environ.get("DGTRS_GEO_PYTHON", "")]
    candidates.append(str(venv_python(default_venv_dir(profile_dir))))
    command = shutil.which("dgtrs-geo")
    if command:
        # A console script lives next to the interpreter of the environment it was installed in.
        folder = Path(command).resolve().parent
        candidates.append(str(venv_python(folder.parent)))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def setup_steps(venv_dir: Path, cuda: bool = False, package: str = PACKAGE) -> List[List[str]]:
    """Return the commands that create the backend venv and install the engine into it.

    Args:
        venv_dir: the venv to create.
        cuda: install PyTorch's CUDA build first (NVIDIA GPU with a recent driver).
        package: the pip requirement of the engine.

    Raises:
        RuntimeError: if no system Python is found to create the venv.

    """
    python = base_python()
    if python is None:
        raise RuntimeError(
            "no Python 3.10+ interpreter found on PATH to create the backend; install Python from "
            "python.org (Windows, macOS) or your package manager, then try again"
        )
    target = str(venv_python(venv_dir))
    steps = [
        [python, "-m", "venv", str(venv_dir)],
        [target, "-m", "pip", "install", "--upgrade", "pip"],
    ]
    if cuda:
        steps.append(
            [target, "-m", "pip", "install", "torch", "torchvision", "--index-url", CUDA_INDEX_URL]
        )
    steps.append([target, "-m", "pip", "install", package])
    return steps


def shell_command(steps: List[List[str]]) -> str:
    """Render setup steps as one command line a user can paste into a terminal."""

    def quote(arg: str) -> str:
        return '"{}"'.format(arg) if (" " in arg or not arg) else arg

    joiner = " && " if sys.platform != "win32" else " & "
    return joiner.join(" ".join(quote(arg) for arg in step) for step in steps)
