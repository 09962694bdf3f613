import json
from pathlib import Path

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
