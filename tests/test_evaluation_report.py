import json
from pathlib import Path

import pytest

from dgtrs_geo.evaluation.report import markdown_report, write_report


def _recalls(mr: float) -> dict[str, float]:
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    return {**dict.fromkeys(keys, 10.0), "mR": mr}


def _selo(values: tuple[float, float, float, float], seconds: float) -> dict:
    mean = dict(zip(("rsu", "rda", "ras", "rmi"), values, strict=True))
    row = {
        "index": 0,
        "jpg_name": "a.jpg",
        "caption": 'a, quoted "query"',
        **mean,
        "seconds": seconds,
    }
    return {"mean": mean, "seconds_per_query": seconds, "samples": [row]}


REPORT = {
    "models": ["GeoRSCLIP ViT-B/32", "mine"],
    "model_ids": {"GeoRSCLIP ViT-B/32": "x", "mine": "y"},
    "datasets": [
        {"name": "RSITMD", "task": "retrieval"},
        {"name": "RSICD", "task": "retrieval"},
        {"name": "EuroSAT", "task": "zeroshot"},
        {"name": "AIRSLT", "task": "selo"},
    ],
    "results": {
        "GeoRSCLIP ViT-B/32": {
            "RSITMD": {"short": _recalls(35.33)},
            "RSICD": {"short": _recalls(26.06)},
            "EuroSAT": {"top1": 61.4, "per_class": {}, "confusion": [[1]], "classnames": ["a"]},
            "AIRSLT": {
                "reference": _selo((0.7556, 0.7309, 0.2580, 0.7447), 17.0),
                "fast": _selo((0.75, 0.7, 0.3, 0.7), 0.5),
            },
        },
        "mine": {
            "RSITMD": {"short": _recalls(37.581)},
            "RSICD": {"short": _recalls(0.0)},
            "EuroSAT": {"top1": 100.0, "per_class": {}, "confusion": [[1]], "classnames": ["a"]},
            "AIRSLT": {
                "reference": _selo((1.0, 0.0, 1.0, 0.4), 2.25),
                "fast": _selo((0.5, 0.25, 0.125, 0.5), 0.125),
            },
        },
    },
    "rmi_weights": {"rsu": 0.4, "ras": 0.35, "rda": 0.25},
}


def test_summary_table_layout() -> None:
    lines = markdown_report(REPORT).splitlines()
    assert lines[2] == (
        "| model | RSITMD mR | RSICD mR | EuroSAT | SeLo Rsu / Rda / Ras / Rmi "
        "| SeLo (fast) Rsu / Rda / Ras / Rmi | SeLo s/query (reference / fast) |"
    )
    assert lines[3] == "|---|---|---|---|---|---|---|"
    assert lines[4] == (
        "| GeoRSCLIP ViT-B/32 | 35.33 | 26.06 | 61.40 | .7556 / .7309 / .2580 / .7447 "
        "| .7500 / .7000 / .3000 / .7000 | 17.00 / 0.50 |"
    )
    assert lines[5] == (
        "| mine | 37.58 | 0.00 | 100.00 | 1.0000 / .0000 / 1.0000 / .4000 "
        "| .5000 / .2500 / .1250 / .5000 | 2.25 / 0.12 |"
    )


def test_detail_tables() -> None:
    text = markdown_report(REPORT)
    assert (
        "| mine | RSITMD | short | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 37.58 |" in text
    )
    assert "| mine | AIRSLT | fast | 0.5000 | 0.2500 | 0.1250 | 0.5000 | 0.125 | 1 |" in text


def test_write_report_files(tmp_path: Path) -> None:
    written = write_report(REPORT, tmp_path / "out")
    assert json.loads(written["json"].read_text()) == REPORT
    csv_lines = written["selo_csv"].read_text().splitlines()
    assert csv_lines[0] == "model,dataset,mode,index,jpg_name,caption,rsu,rda,ras,rmi,seconds"
    assert len(csv_lines) == 1 + 2 * 2
    assert csv_lines[1].startswith(
        'GeoRSCLIP ViT-B/32,AIRSLT,reference,0,a.jpg,"a, quoted ""query""",0.7556'
    )
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert figures == ["confusion-EuroSAT-GeoRSCLIP_ViT-B_32.png", "confusion-EuroSAT-mine.png"]
    assert not list((tmp_path / "out").glob("**/*.partial"))


def test_write_report_nested_atomic_and_every_file_returned(tmp_path: Path, monkeypatch) -> None:
    import os

    from PIL import Image

    import dgtrs_geo.evaluation.report as report

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((str(src), str(dst)))
        return real_replace(src, dst)

    drawn = []
    plot = report.plot_confusion_matrix

    def spy_plot(*args):
        drawn.append(args)
        return plot(*args)

    monkeypatch.setattr(report.os, "replace", spy_replace)
    monkeypatch.setattr(report, "plot_confusion_matrix", spy_plot)
    out = tmp_path / "a" / "b"  # neither folder exists yet
    written = write_report(REPORT, out)
    figures = ["confusion-EuroSAT-GeoRSCLIP_ViT-B_32.png", "confusion-EuroSAT-mine.png"]
    assert written == {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "selo_csv": out / "selo_samples.csv",
        **{f"figure:{name}": out / "figures" / name for name in figures},
    }
    # Readable JSON, the Markdown the report renders, each file renamed from its own folder.
    assert written["json"].read_text() == json.dumps(REPORT, indent=2) + "\n"
    assert written["markdown"].read_text() == markdown_report(REPORT)
    assert sorted(dst for _, dst in replaced) == sorted(str(p) for p in written.values())
    for src, dst in replaced:
        assert Path(src).parent == Path(dst).parent
        assert Path(src).name.startswith(f".{Path(dst).name}.") and src.endswith(".partial")
    assert [args[2] for args in drawn] == ["GeoRSCLIP ViT-B/32 on EuroSAT", "mine on EuroSAT"]
    assert [args[:2] for args in drawn] == [([[1]], ["a"]), ([[1]], ["a"])]
    with Image.open(out / "figures" / figures[0]) as png:
        assert png.format == "PNG" and png.size == (600, 480)  # 5 x 4 inches at 120 dpi


def test_failed_figure_write_keeps_its_cause_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    import dgtrs_geo.evaluation.report as report
    from dgtrs_geo.errors import OutputError

    class FullDisk:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"half a png")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_confusion_matrix", lambda *args: FullDisk())
    monkeypatch.setattr(report.plt, "close", lambda figure: None)
    with pytest.raises(OutputError, match="No space left on device") as error:
        write_report(REPORT, tmp_path / "out")
    assert isinstance(error.value.__cause__, OSError)
    assert list((tmp_path / "out" / "figures").iterdir()) == []


def test_a_report_without_selo_has_no_selo_csv_and_other_selo_sets_are_named() -> None:
    import copy

    zeroshot_only = copy.deepcopy(REPORT)
    zeroshot_only["datasets"] = [{"name": "EuroSAT", "task": "zeroshot"}]
    assert markdown_report(zeroshot_only).splitlines()[2] == "| model | EuroSAT |"
    renamed = copy.deepcopy(REPORT)
    renamed["datasets"][3]["name"] = "MySeLo"
    for label in renamed["models"]:
        renamed["results"][label]["MySeLo"] = renamed["results"][label].pop("AIRSLT")
    header = markdown_report(renamed).splitlines()[2]
    assert "| SeLo MySeLo Rsu / Rda / Ras / Rmi | SeLo MySeLo (fast) Rsu" in header


def test_write_report_without_selo(tmp_path: Path) -> None:
    import copy

    zeroshot_only = copy.deepcopy(REPORT)
    zeroshot_only["datasets"] = [{"name": "EuroSAT", "task": "zeroshot"}]
    written = write_report(zeroshot_only, tmp_path)
    assert "selo_csv" not in written and not (tmp_path / "selo_samples.csv").exists()


EXPECTED_MARKDOWN = """\
# dgtrs-geo evaluation

| model | RSITMD mR | RSICD mR | EuroSAT | SeLo Rsu / Rda / Ras / Rmi | SeLo (fast) Rsu / Rda / Ras / Rmi | SeLo s/query (reference / fast) |
|---|---|---|---|---|---|---|
| GeoRSCLIP ViT-B/32 | 35.33 | 26.06 | 61.40 | .7556 / .7309 / .2580 / .7447 | .7500 / .7000 / .3000 / .7000 | 17.00 / 0.50 |
| mine | 37.58 | 0.00 | 100.00 | 1.0000 / .0000 / 1.0000 / .4000 | .5000 / .2500 / .1250 / .5000 | 2.25 / 0.12 |

## Retrieval

| model | dataset | captions | I2T R@1 | I2T R@5 | I2T R@10 | T2I R@1 | T2I R@5 | T2I R@10 | mR |
|---|---|---|---|---|---|---|---|---|---|
| GeoRSCLIP ViT-B/32 | RSITMD | short | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 35.33 |
| GeoRSCLIP ViT-B/32 | RSICD | short | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 26.06 |
| mine | RSITMD | short | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 37.58 |
| mine | RSICD | short | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 | 0.00 |

## Semantic localization

| model | dataset | mode | Rsu | Rda | Ras | Rmi | s/query | queries |
|---|---|---|---|---|---|---|---|---|
| GeoRSCLIP ViT-B/32 | AIRSLT | reference | 0.7556 | 0.7309 | 0.2580 | 0.7447 | 17.000 | 1 |
| GeoRSCLIP ViT-B/32 | AIRSLT | fast | 0.7500 | 0.7000 | 0.3000 | 0.7000 | 0.500 | 1 |
| mine | AIRSLT | reference | 1.0000 | 0.0000 | 1.0000 | 0.4000 | 2.250 | 1 |
| mine | AIRSLT | fast | 0.5000 | 0.2500 | 0.1250 | 0.5000 | 0.125 | 1 |
"""


def test_whole_markdown_report() -> None:
    # The published layout, written out: title, summary, then the two detail tables.
    assert markdown_report(REPORT) == EXPECTED_MARKDOWN


def test_plot_selo_maps_panels_subsampling_and_polygons() -> None:
    import numpy as np
    from matplotlib import pyplot as plt

    from dgtrs_geo.evaluation.report import plot_selo_maps

    image = np.zeros((30, 50, 3), np.uint8)
    image[:, 25:] = 200
    maps = {"reference": np.linspace(0, 1, 1500).reshape(30, 50), "fast": np.full((30, 50), 0.5)}
    triangle = np.array([[5.0, 5.0], [20.0, 5.0], [5.0, 25.0]])
    figure = plot_selo_maps(image, maps, [triangle], "a red roof", max_side=20)
    assert [ax.get_title() for ax in figure.axes] == ["image", "reference", "fast"]
    assert figure._suptitle.get_text() == "a red roof"
    assert tuple(figure.get_size_inches()) == (15.0, 5.0)
    # ceil(50 / 20) = 3: every third pixel is drawn, over the image's full extent.
    picture, overlay = figure.axes[1].images
    assert picture.get_array().shape == (10, 17, 3) and overlay.get_array().shape == (10, 17)
    np.testing.assert_array_equal(overlay.get_array(), maps["reference"][::3, ::3])
    assert picture.get_extent() == [0, 50, 30, 0] and overlay.get_alpha() == 0.5
    assert overlay.get_clim() == (0, 1) and overlay.get_cmap().name == "jet"
    assert len(figure.axes[0].images) == 1  # the image alone
    for ax in figure.axes:
        (line,) = ax.get_lines()  # the polygon, closed on its first vertex
        assert line.get_xdata().tolist() == [5.0, 20.0, 5.0, 5.0]
        assert line.get_ydata().tolist() == [5.0, 5.0, 25.0, 5.0]
        assert line.get_color() == "lime" and not ax.axison
    untitled = plot_selo_maps(image, {}, [], max_side=1024)
    assert len(untitled.axes) == 1 and untitled._suptitle is None
    assert untitled.axes[0].images[0].get_array().shape == (30, 50, 3)
    plt.close(figure)
    plt.close(untitled)
