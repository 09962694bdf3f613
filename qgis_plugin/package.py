"""Build the plugin zip that QGIS's "Install from ZIP" accepts.

Usage (from the repository root, in the dev environment)::

    python -m qgis_plugin.package              # -> dist/dgtrs_geo_qgis-<version>.zip

The zip holds one folder, ``dgtrs_geo_qgis/``, with the plugin's modules, the top-level
``metadata.txt`` (the single source of the plugin's metadata), qgis-plugin-tools vendored
inside the plugin (its documented submodule layout), so the plugin needs nothing installed in
QGIS's Python, and ``engine/dgtrs_geo-<version>-py3-none-any.whl``: the engine built from this
checkout (``pip wheel --no-deps``), which "Set up backend" installs into the backend venv. The
engine's version (pyproject.toml) must be the plugin's (metadata.txt). This module itself is
left out.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from packaging.specifiers import SpecifierSet

from .version import plugin_version

PLUGIN_DIR = Path(__file__).resolve().parent
ROOT = PLUGIN_DIR.parent
#: The plugin's folder name inside the zip (and in the QGIS profile): a Python identifier.
SLUG = "dgtrs_geo_qgis"
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}
_SKIP_FILES = {"package.py", "metadata.txt"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
#: The oldest Python that a supported QGIS ships, and the vendored tools release that runs on it.
OLDEST_QGIS_PYTHON = "3.9"
TOOLS_REQUIREMENT = "qgis-plugin-tools>=0.5,<1.0"
#: What the engine wheel is built from (copied to a scratch folder: the checkout stays clean).
ENGINE_SOURCES = ("pyproject.toml", "README.md", "dgtrs_geo")


def _files(folder: Path, skip_files: frozenset = frozenset()) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if any(part in _SKIP_DIRS for part in path.relative_to(folder).parts):
            continue
        if path.is_file() and path.name not in skip_files and path.suffix not in _SKIP_SUFFIXES:
            yield path


def _tools_distribution() -> importlib_metadata.Distribution:
    """Return the installed qgis-plugin-tools, if it runs on the oldest Python a supported QGIS ships."""
    try:
        distribution = importlib_metadata.distribution("qgis-plugin-tools")
    except importlib_metadata.PackageNotFoundError:
        raise SystemExit(
            "qgis-plugin-tools is vendored into the zip: install it first "
            "('python -m pip install \"{}\"')".format(TOOLS_REQUIREMENT)
        ) from None
    requires_python = distribution.metadata.get("Requires-Python") or ""
    if requires_python and not SpecifierSet(requires_python).contains(OLDEST_QGIS_PYTHON):
        raise SystemExit(
            "the installed qgis-plugin-tools {} needs Python {}, but the plugin must load on "
            "Python {} (QGIS up to 3.32 on Windows): "
            "run 'python -m pip install \"{}\"'".format(
                distribution.version, requires_python, OLDEST_QGIS_PYTHON, TOOLS_REQUIREMENT
            )
        )
    return distribution


def engine_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Return the engine's version from ``pyproject.toml`` (``[project] version``)."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text("utf-8"), re.MULTILINE)
    if match is None:
        raise SystemExit("no version in {}".format(pyproject))
    return match.group(1)


def build_engine_wheel(output_dir: Path) -> Path:
    """Build the engine's wheel from this checkout into ``output_dir`` and return its path.

    ``pip wheel --no-deps`` on a copy of the sources, without build isolation when setuptools
    is installed (no download; pip fetches it from the index otherwise).

    Raises:
        SystemExit: if the engine's version is not the plugin's, or the build fails.

    """
    version, plugin = engine_version(), plugin_version()
    if version != plugin:
        raise SystemExit(
            "the engine is {} (pyproject.toml) but the plugin is {} (metadata.txt): the zip must "
            "carry the engine of its own version; set both to the same".format(version, plugin)
        )
    with tempfile.TemporaryDirectory(prefix="dgtrs-geo-wheel-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in ENGINE_SOURCES:
            path = ROOT / name
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                shutil.copytree(path, source / name, ignore=ignore)
            else:
                shutil.copy2(path, source / name)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", scratch]
        try:
            import setuptools  # noqa: F401

            command.append("--no-build-isolation")
        except ImportError:
            pass
        run = subprocess.run(command + [str(source)], capture_output=True, text=True)
        wheels = sorted(Path(scratch).glob("dgtrs_geo-{}-*.whl".format(version)))
        if run.returncode != 0 or not wheels:
            raise SystemExit("building the engine wheel failed:\n" + run.stdout + run.stderr)
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / wheels[0].name
        shutil.copyfile(wheels[0], target)
    return target


def zip_entries(engine_wheel: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """Return ``(source file, name in the zip)`` for every file the zip holds.

    Args:
        engine_wheel: the engine wheel to carry in ``engine/`` (None: the zip carries none).

    """
    entries = [
        (path, "{}/{}".format(SLUG, path.relative_to(PLUGIN_DIR).as_posix()))
        for path in _files(PLUGIN_DIR, frozenset(_SKIP_FILES))
    ]
    entries.append((ROOT / "metadata.txt", "{}/metadata.txt".format(SLUG)))
    if engine_wheel is not None:
        entries.append((engine_wheel, "{}/engine/{}".format(SLUG, engine_wheel.name)))
    distribution = _tools_distribution()
    import qgis_plugin_tools

    tools = Path(qgis_plugin_tools.__file__).resolve().parent
    entries += [
        (path, "{}/qgis_plugin_tools/{}".format(SLUG, path.relative_to(tools).as_posix()))
        for path in _files(tools)
    ]
    # The vendored tools are GPL: their licence text travels with them.
    licence = next(
        (f for f in distribution.files or [] if f.name.upper().startswith(("LICENSE", "COPYING"))),
        None,
    )
    if licence is not None:
        entries.append(
            (Path(distribution.locate_file(licence)), "{}/qgis_plugin_tools/LICENSE".format(SLUG))
        )
    return entries


def build(output_dir: Path) -> Path:
    """Write ``<output_dir>/dgtrs_geo_qgis-<version>.zip`` atomically and return its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / "{}-{}.zip".format(SLUG, plugin_version())
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="dgtrs-geo-engine-") as scratch:
        wheel = build_engine_wheel(Path(scratch))
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for source, name in zip_entries(wheel):
                archive.write(source, name)
    os.replace(partial, target)
    return target


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: build the zip and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m qgis_plugin.package", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)"
    )
    args = parser.parse_args(argv)
    print(build(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
