"""What "Set up backend" runs: a venv with the engine the plugin zip carries.

The steps, each one command shown in the dialog's log (and together as the manual command):

1. ``<base python> -m venv [--system-site-packages] <venv>``;
2. only when reusing the packages of a base interpreter that is itself a venv: a ``.pth`` file
   in the new venv that names the base's site-packages (``--system-site-packages`` alone only
   reaches the packages of the Python that venv was made from);
3. ``pip install torch torchvision`` from PyTorch's CPU index on Linux (PyPI's Linux wheels are
   the CUDA build, gigabytes of NVIDIA libraries), from its CUDA index when CUDA is ticked, and
   from PyPI on Windows and macOS (whose PyPI wheels are the CPU, or CPU and Metal, build);
4. ``pip install <engine wheel>``, the ``dgtrs_geo-<version>-py3-none-any.whl`` that
   ``python -m qgis_plugin.package`` put into the zip's ``engine/`` folder; its dependencies
   come from the package index (PyTorch, already installed, is kept).

Extra pip options (``--no-index --find-links <folder>`` for an offline wheelhouse, a proxy, a
mirror) go to both pip steps; a PyTorch index setting replaces the default one.
"""

from __future__ import annotations

import email.parser
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..version import plugin_version
from .environment import MARKER, venv_python

#: The plugin's folder (holds ``engine/`` in a release zip).
PLUGIN_DIR = Path(__file__).resolve().parent.parent
#: Where the release zip carries the engine wheel.
ENGINE_DIR = "engine"
#: The engine's distribution name.
PACKAGE = "dgtrs-geo"
#: PyTorch's CPU-only wheels (Linux needs them: PyPI's Linux torch is the CUDA build).
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
#: PyTorch's CUDA 13.0 wheels (NVIDIA driver 580 or newer; older drivers: a cu12x index).
CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu130"
#: Oldest Python the engine runs on when its wheel does not say (pyproject's requires-python).
DEFAULT_MIN_PYTHON = (3, 11)
#: The file step 2 writes into the new venv's site-packages.
LINK_FILE = "_dgtrs_geo_base.pth"
# No single quotes inside: the manual command quotes the script with them.
_LINK_SCRIPT = (
    'import sys, sysconfig; p = sysconfig.get_paths()["purelib"] + "/{}"; '
    'open(p, "w").write(chr(10).join(sys.argv[1:]) + chr(10)); print("wrote", p)'
).format(LINK_FILE)
_PROBE = (
    "import json, os, site, sys; venv = sys.prefix != sys.base_prefix; "
    "own = [p for p in site.getsitepackages() if p.startswith(sys.prefix) and os.path.isdir(p)]; "
    "print(json.dumps({'executable': sys.executable, 'version': list(sys.version_info[:3]), "
    "'venv': venv, 'site': own}))"
)
_probed: Dict[Tuple[str, ...], Optional[dict]] = {}


class SetupError(RuntimeError):
    """The set-up cannot be planned (no suitable Python); the message says what to install."""


@dataclass(frozen=True)
class SetupOptions:
    """How "Set up backend" builds the venv.

    Attributes:
        venv_dir: the venv to create.
        cuda: install PyTorch's CUDA build (NVIDIA GPU; Linux and Windows).
        base_python: the interpreter that creates the venv ("" finds one on PATH).
        reuse_packages: let the venv see the base interpreter's packages (a pre-provisioned
            PyTorch is then kept, nothing is downloaded for it).
        pip_options: extra pip arguments for both pip steps, e.g. ``--no-index --find-links
            /srv/wheels`` for an offline install.
        torch_index: the index PyTorch comes from ("" for the platform's default, see the
            module docstring).

    """

    venv_dir: Path
    cuda: bool = False
    base_python: str = ""
    reuse_packages: bool = False
    pip_options: str = ""
    torch_index: str = ""


@dataclass(frozen=True)
class Step:
    """One set-up command and what it does, for the log."""

    title: str
    argv: List[str]


def probe_python(argv: Sequence[str]) -> Optional[dict]:
    """Ask an interpreter for its executable, version, venv-ness and own site-packages.

    Args:
        argv: the command that starts it (``["python3"]``, ``["py", "-3.12"]``).

    Returns:
        ``{"executable", "version", "venv", "site"}``, or None if it does not run.

    """
    key = tuple(argv)
    if key not in _probed:
        try:
            run = subprocess.run(
                list(argv) + ["-c", _PROBE],
                capture_output=True,
                text=True,
                timeout=30,
                env=clean_environment(),
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
            _probed[key] = json.loads(run.stdout) if run.returncode == 0 else None
        except (OSError, ValueError, subprocess.SubprocessError):
            _probed[key] = None
    return _probed[key]


def _candidates(platform: str) -> List[List[str]]:
    if platform == "win32":
        launchers = [["py", "-3.{}".format(minor)] for minor in (13, 12, 11)]
        return launchers + [["python"], ["python3"]]
    names = ["python3.13", "python3.12", "python3.11", "python3"]
    return [[found] for found in (shutil.which(name) for name in names) if found]


def find_base_python(
    configured: str = "",
    minimum: Tuple[int, ...] = DEFAULT_MIN_PYTHON,
    platform: str = sys.platform,
) -> dict:
    """Return the probe of the interpreter that creates the venv.

    Args:
        configured: an interpreter chosen in the settings ("" to look on PATH).
        minimum: the oldest Python the engine supports.
        platform: ``sys.platform`` of the machine.

    Raises:
        SetupError: naming the Python version to install, if none fits.

    """
    candidates = [[configured]] if configured else _candidates(platform)
    for argv in candidates:
        info = probe_python(argv)
        if info is not None and tuple(info["version"]) >= tuple(minimum):
            return info
    wanted = ".".join(str(part) for part in minimum)
    if configured:
        raise SetupError(
            "the base Python {} does not run or is older than {}: choose a Python {}+ "
            "interpreter as base, or leave it empty to search PATH".format(
                configured, wanted, wanted
            )
        )
    raise SetupError(
        "no Python {}+ interpreter found on PATH to create the backend: install it from "
        "python.org (Windows, macOS) or your package manager, or choose one as base "
        "Python".format(wanted)
    )


def bundled_wheel(plugin_dir: Path = PLUGIN_DIR) -> Optional[Path]:
    """Return the engine wheel in the plugin's ``engine/`` folder matching the plugin version."""
    pattern = str(plugin_dir / ENGINE_DIR / "dgtrs_geo-{}-*.whl".format(plugin_version()))
    found = sorted(glob.glob(pattern))
    return Path(found[-1]) if found else None


def engine_requirement(plugin_dir: Path = PLUGIN_DIR) -> str:
    """Return what pip installs as the engine: the bundled wheel, else a checkout, else PyPI's.

    A development copy of the plugin (run from the repository) has no wheel: the repository
    itself is installed then.
    """
    wheel = bundled_wheel(plugin_dir)
    if wheel is not None:
        return str(wheel)
    pyproject = plugin_dir.parent / "pyproject.toml"
    if pyproject.is_file() and 'name = "{}"'.format(PACKAGE) in pyproject.read_text("utf-8"):
        return str(plugin_dir.parent)
    return "{}=={}".format(PACKAGE, plugin_version())


def requires_python(requirement: str) -> Tuple[int, ...]:
    """Return the oldest Python a wheel declares (``Requires-Python: >=3.11``), or the default."""
    if not requirement.endswith(".whl"):
        return DEFAULT_MIN_PYTHON
    with zipfile.ZipFile(requirement) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    spec = (metadata.get("Requires-Python") or "").replace(" ", "")
    if spec.startswith(">="):
        return tuple(int(part) for part in spec[2:].split(",")[0].split("."))
    return DEFAULT_MIN_PYTHON


def torch_index(cuda: bool, platform: str = sys.platform) -> Optional[str]:
    """Return the index PyTorch comes from by default (None: the ordinary package index)."""
    if platform == "darwin":
        return None  # macOS wheels on PyPI: CPU and Metal (MPS); there is no CUDA build
    if cuda:
        return CUDA_INDEX_URL
    return CPU_INDEX_URL if platform.startswith("linux") else None


def setup_steps(
    options: SetupOptions, plugin_dir: Path = PLUGIN_DIR, platform: str = sys.platform
) -> List[Step]:
    """Return the commands that create the backend venv and install the engine into it.

    Raises:
        SetupError: if no suitable Python is found to create the venv.

    """
    requirement = engine_requirement(plugin_dir)
    base = find_base_python(options.base_python, requires_python(requirement), platform)
    target = str(venv_python(options.venv_dir))
    venv = [base["executable"], "-m", "venv"]
    if options.reuse_packages:
        venv.append("--system-site-packages")
    steps = [Step("create the venv", venv + [str(options.venv_dir)])]
    if options.reuse_packages and base["venv"] and base["site"]:
        steps.append(
            Step(
                "let the venv see the base venv's packages",
                [target, "-c", _LINK_SCRIPT] + list(base["site"]),
            )
        )
    pip_options = shlex.split(options.pip_options, posix=platform != "win32")
    torch = [target, "-m", "pip", "install", "torch", "torchvision"]
    index = options.torch_index or torch_index(options.cuda, platform)
    if index and not {"--no-index", "--index-url", "-i"} & set(pip_options):
        torch += ["--index-url", index]
    steps.append(Step("install PyTorch", torch + pip_options))
    steps.append(
        Step(
            "install the dgtrs-geo engine",
            [target, "-m", "pip", "install", requirement] + pip_options,
        )
    )
    return steps


def remove_venv(venv_dir: Path) -> None:
    """Delete a set-up venv (only a folder that looks like one: a marker or ``pyvenv.cfg``).

    Raises:
        OSError: if it cannot be deleted (files in use), or the folder is not a venv.

    """
    folder = Path(venv_dir)
    if not folder.exists():
        return
    if not ((folder / "pyvenv.cfg").is_file() or (folder / MARKER).is_file()):
        raise OSError("{} does not look like a backend venv; not deleting it".format(folder))
    shutil.rmtree(folder)


def shell_command(steps: Sequence[Step], platform: str = sys.platform, joiner: str = " && ") -> str:
    """Render set-up steps as one command line a user can paste into a terminal.

    Args:
        steps: the steps.
        platform: ``sys.platform`` of the machine (Windows quotes differently).
        joiner: between commands (a newline: one command per line, run one after another).

    """
    render = subprocess.list2cmdline if platform == "win32" else shlex.join
    return joiner.join(render(step.argv) for step in steps)


def clean_environment() -> Dict[str, str]:
    """Return the environment set-up commands run in: QGIS's Python variables removed."""
    env = dict(os.environ)
    # QGIS points these at its own Python; the base interpreter and the venv are others.
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    return env
