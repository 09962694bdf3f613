"""Find the Python environment that runs the ``dgtrs-geo`` engine, and the state it is in.

QGIS's own Python never imports torch: the engine lives in a separate interpreter, found in this
order: the plugin setting, the ``DGTRS_GEO_PYTHON`` environment variable, the venv that "Set up
backend" creates in the QGIS profile (once its set-up has completed), and the interpreter behind
a ``dgtrs-geo`` command on PATH.

"Set up backend" keeps a marker file in its venv, ``dgtrs-geo-setup.json``, with ``state``
``running``, ``failed`` or ``complete``: a venv whose set-up did not complete is never used, and
the settings dialog and the dock both describe it the same way (:func:`detect_backend`).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

#: The marker "Set up backend" writes into its venv.
MARKER = "dgtrs-geo-setup.json"

#: States of the set-up venv.
ABSENT, READY, INCOMPLETE = "absent", "ready", "incomplete"


@dataclass(frozen=True)
class Backend:
    """The interpreter the plugin will run, and what became of the set-up venv.

    Attributes:
        python: the interpreter to run the worker with, or None when none is usable.
        source: where ``python`` came from: ``setting``, ``environment``, ``venv``, ``path``,
            or ``""``.
        venv_dir: the folder "Set up backend" uses.
        venv_state: ``absent``, ``ready`` or ``incomplete``.
        venv_detail: for an incomplete venv, what happened (the failed step).

    """

    python: Optional[str]
    source: str
    venv_dir: str
    venv_state: str
    venv_detail: str = ""


def venv_python(venv_dir: Path) -> Path:
    """Return the interpreter path inside a venv on this platform."""
    if sys.platform == "win32":
        return Path(venv_dir) / "Scripts" / "python.exe"
    return Path(venv_dir) / "bin" / "python"


def default_venv_dir(profile_dir: str) -> Path:
    """Return where "Set up backend" creates its venv: ``<profile>/dgtrs_geo/venv``."""
    return Path(profile_dir) / "dgtrs_geo" / "venv"


def read_marker(venv_dir: Path) -> Dict[str, Any]:
    """Return the set-up marker of a venv (``{}`` when there is none or it is unreadable)."""
    try:
        with open(Path(venv_dir) / MARKER, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(venv_dir: Path, **fields: Any) -> None:
    """Write the set-up marker atomically (the venv folder is created if needed)."""
    folder = Path(venv_dir)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (MARKER + ".partial")
    partial.write_text(json.dumps(fields, indent=1), encoding="utf-8")
    os.replace(partial, folder / MARKER)


def _has_engine(venv_dir: Path) -> bool:
    """Whether ``dgtrs-geo`` is installed in the venv itself (a hand-made one has no marker)."""
    patterns = ("lib/python3*/site-packages", "Lib/site-packages")
    return any(
        glob.glob(str(Path(venv_dir) / pattern / "dgtrs_geo-*.dist-info")) for pattern in patterns
    )


def venv_state(venv_dir: Path) -> Tuple[str, str]:
    """Return ``(state, detail)`` of the set-up venv: absent, ready or incomplete."""
    venv_dir = Path(venv_dir)
    if not venv_dir.exists():
        return ABSENT, ""
    marker = read_marker(venv_dir)
    python = venv_python(venv_dir)
    if marker.get("state") == "complete" and python.is_file():
        return READY, ""
    if not marker and python.is_file() and _has_engine(venv_dir):
        return READY, ""
    if marker.get("state") == "failed":
        return INCOMPLETE, "the set-up stopped: {}".format(marker.get("detail", "a step failed"))
    if marker.get("state") == "running":
        return INCOMPLETE, "the set-up was interrupted before it finished"
    return INCOMPLETE, "the folder holds no working dgtrs-geo environment"


def detect_backend(configured: str, profile_dir: str) -> Backend:
    """Return the backend interpreter to use and the state of the set-up venv.

    Args:
        configured: the interpreter from the plugin settings ("" when unset).
        profile_dir: the QGIS profile folder (holds the venv "Set up backend" makes).

    """
    venv_dir = default_venv_dir(profile_dir)
    state, detail = venv_state(venv_dir)
    candidates = [
        ("setting", configured),
        ("environment", os.environ.get("DGTRS_GEO_PYTHON", "")),
        ("venv", str(venv_python(venv_dir)) if state == READY else ""),
    ]
    command = shutil.which("dgtrs-geo")
    if command:
        # A console script lives next to the interpreter of the environment it was installed in.
        folder = Path(command).resolve().parent
        candidates.append(("path", str(venv_python(folder.parent))))
    for source, candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Backend(candidate, source, str(venv_dir), state, detail)
    return Backend(None, "", str(venv_dir), state, detail)


def detect_python(configured: str, profile_dir: str) -> Optional[str]:
    """Return the backend interpreter to use, or None when none is found."""
    return detect_backend(configured, profile_dir).python
