"""One click, in the real QGIS desktop under Xvfb: install the zip into a fresh profile, click
*Set up backend* (no hand-made venv), wait, then run two queries from the dock.

On this machine the set-up must not download PyTorch: the dialog's *Base Python* is this test's
interpreter with *Reuse the base Python's packages* ticked, so the real set-up steps run end to
end (venv, link, ``pip install torch torchvision``, ``pip install <the zip's engine wheel>``)
and pip finds PyTorch and every dependency already installed. Set ``DGTRS_GEO_DOCS_PICTURES``
to a folder to keep the screenshots in 256 colours (docs/ for the documentation).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from benchmarks.qgis_catalog import install_plugin, run_driver, small_png

pytestmark = [pytest.mark.qgis, pytest.mark.slow]

DRIVER = Path(__file__).parent / "data" / "qgis" / "one_click.py"
QUERIES = ["a lake surrounded by dense forest", "snow-covered mountain peaks"]


def assert_heatmap_shown_only_where_high(samples: list) -> None:
    """Rows of (relative match, canvas colour without the heatmap, with it): the imagery's own
    colour under low values (the ramp's transparent half), another one under high values."""
    table = np.array(samples, dtype=np.float64)
    values, plain, shown = table[:, 0], table[:, 1], table[:, 2]
    low, high = values < 0.45, values > 0.6
    assert low.sum() > 20 and high.sum() > 20
    assert (plain[low] == shown[low]).all()
    assert (plain[high] != shown[high]).mean() > 0.95


@pytest.fixture(scope="module")
def desktop_run(tmp_path_factory, tiny_checkpoint):
    """Run the driver in QGIS; return its report, the profile and the screenshots folder."""
    from dgtrs_geo.localization.demo import sample_raster

    tmp = tmp_path_factory.mktemp("desktop")
    plugin_zip = install_plugin(tmp)
    profile = tmp / "profiles" / "default"
    shots = tmp / "shots"
    shots.mkdir()
    config = {
        "base_python": sys.executable,
        "raster": str(sample_raster()),
        "checkpoint": str(tiny_checkpoint),
        "queries": QUERIES,
        "shots": str(shots),
    }
    # No backend but the one the set-up makes: no DGTRS_GEO_PYTHON, no dgtrs-geo on PATH.
    env = {"PATH": "/usr/bin:/bin", "DGTRS_GEO_PYTHON": None}
    report = run_driver(tmp, DRIVER, config, env, "1600x1000")
    assert report.get("ok"), report.get("error")
    pictures = os.environ.get("DGTRS_GEO_DOCS_PICTURES")
    if pictures:
        # In 256 colours, as the catalog's pictures: a third of the bytes.
        small_png(shots / "qgis-setup.png", Path(pictures) / "qgis-setup.png")
        small_png(shots / "qgis-desktop.png", Path(pictures) / "qgis-dock.png")
    return report, profile, shots, plugin_zip


def test_the_worker_does_not_start_with_qgis_or_the_dock(desktop_run) -> None:
    report = desktop_run[0]
    assert report["worker_at_start"] is False
    assert report["worker_after_setup"] is False


def test_one_click_setup_installs_the_zips_engine_without_downloading_torch(desktop_run) -> None:
    report, profile, _, plugin_zip = desktop_run
    venv = profile / "dgtrs_geo" / "venv"
    assert report["state_before"] == "not created yet"
    assert report["state_after"] == f"ready: {venv}"
    assert report["in_use"] == f"{venv / 'bin' / 'python'} (from the set-up venv)"
    marker = json.loads((venv / "dgtrs-geo-setup.json").read_text())
    assert marker["state"] == "complete" and marker["engine"] == "0.1.0"
    log = report["setup_log"]
    assert "[4/4] install the dgtrs-geo engine" in log
    assert "engine/dgtrs_geo-0.1.0-py3-none-any.whl" in log
    assert "Requirement already satisfied: torch" in log and "Downloading torch" not in log
    # The engine lives in the venv itself, from the zip's wheel, not borrowed from the base.
    installed = venv / "lib" / "python3.11" / "site-packages" / "dgtrs_geo" / "worker.py"
    wheel = zipfile.ZipFile(plugin_zip).read(
        "dgtrs_geo_qgis/engine/dgtrs_geo-0.1.0-py3-none-any.whl"
    )
    (profile / "engine.whl").write_bytes(wheel)
    assert installed.read_bytes() == zipfile.ZipFile(profile / "engine.whl").read(
        "dgtrs_geo/worker.py"
    )
    assert report["worker_python"] == str(venv / "bin" / "python")
    steps = [
        line for line in log.splitlines() if line.startswith(("[", "(step done", "Backend set"))
    ]
    print("one-click set-up: {:.1f} s\n  {}".format(report["setup_seconds"], "\n  ".join(steps)))


def test_queries_from_the_dock_succeed_and_the_second_is_warm(desktop_run) -> None:
    report = desktop_run[0]
    first, second = report["runs"]
    for run in (first, second):
        assert run["status"].startswith("Done in"), run["status"]
        assert Path(run["record"]["heatmap"]).is_file()
    assert first["record"]["query"] == QUERIES[0] and second["record"]["query"] == QUERIES[1]
    assert report["sizes"] == "64, 128, 192"
    stages = first["statuses"]
    assert stages.index("Starting backend\u2026") < stages.index("Loading model\u2026")
    assert any(s.startswith("Encoding windows\u2026") for s in stages)
    assert first["record"]["start_seconds"] > 0 and second["record"]["start_seconds"] == 0
    assert first["record"]["seconds"] > first["record"]["start_seconds"]
    assert second["record"]["seconds"] < first["record"]["seconds"]
    print(
        "dock query times: first {:.1f} s (backend start {:.1f} s), second {:.2f} s".format(
            first["record"]["seconds"],
            first["record"]["start_seconds"],
            second["record"]["seconds"],
        )
    )


def test_screenshot_shows_the_heatmap_only_where_scores_are_high(desktop_run) -> None:
    """Canvas pixels under low scores are the imagery's own; under high scores, coloured."""
    report, _, shots, _ = desktop_run
    assert_heatmap_shown_only_where_high(report["samples"])
    assert report["changed_with_polygons"]
    with rasterio.open(shots / "qgis-desktop.png") as picture:
        assert picture.width >= 1400 and picture.height >= 900
