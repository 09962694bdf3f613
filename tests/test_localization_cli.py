from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from dgtrs_geo.cli import main
from dgtrs_geo.localization import EmbeddingIndex
from dgtrs_geo.localization.demo import sample_raster


@pytest.fixture
def raster(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, 96, 128)).astype(np.uint8)
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 128, "height": 96, "count": 3, "dtype": "uint8"}
    transform = from_origin(600000, 5500000, 2, 2)
    with rasterio.open(path, "w", crs="EPSG:32631", transform=transform, **profile) as dst:
        dst.write(data)
    return path


def test_index_then_localize(raster, tiny_checkpoint, tmp_path, capsys) -> None:
    common = ["--model", str(tiny_checkpoint), "--scales", "32", "64", "--index-dir", str(tmp_path)]
    assert main(["index", str(raster), *common]) == 0
    out = capsys.readouterr()
    assert "index:" in out.out and "model: dgtrs-tiny-" in out.err
    (index_dir,) = tmp_path.glob("scene-*.dgtrs-index")
    assert EmbeddingIndex.load(index_dir).meta["plan"]["scales"] == [32, 64]
    out_dir = tmp_path / "out"
    outputs = ["--outputs", "heatmap", "polygons", "geojson", "overlay"]
    code = main(
        ["localize", str(raster), "a red roof", "a lake", "-o", str(out_dir), *outputs, *common]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "'a red roof': best at x=" in captured.out and "(EPSG:32631)" in captured.out
    assert "reused embedding index" in captured.err  # built by `index` above
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(
        f"{stem}{suffix}"
        for stem in ("a-red-roof", "a-lake")
        for suffix in (".tif", ".gpkg", ".geojson", ".png")
    )
    with rasterio.open(out_dir / "a-red-roof.tif") as src:
        # 2 m pixels, cells of 32 / 16 = 2 pixels.
        assert src.crs.to_epsg() == 32631 and src.transform == from_origin(600000, 5500000, 4, 4)
    assert (gpd.read_file(out_dir / "a-lake.gpkg")["query"] == "a lake").all()


def test_localize_errors_are_clear(raster, tiny_checkpoint, tmp_path, capsys) -> None:
    args = [
        "localize",
        str(raster),
        "x",
        "-o",
        str(tmp_path / "o"),
        "--model",
        str(tiny_checkpoint),
    ]
    assert main([*args, "--bands", "3,2,9"]) == 2
    assert "band index 9 is out of range" in capsys.readouterr().err
    assert main([*args[:2], "", *args[3:]]) == 2
    assert "non-empty" in capsys.readouterr().err
    assert main([*args, "--aoi", "1,2,three,4"]) == 2
    assert "neither an existing vector file nor minx,miny,maxx,maxy" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_offline_default_model_says_so(raster, tmp_path, capsys, monkeypatch) -> None:
    import dgtrs_geo.models.factory as factory
    from dgtrs_geo.models import WeightsUnavailableError

    def offline(entry, **kwargs):
        raise WeightsUnavailableError(f"weights for {entry.name!r} are not cached (offline)")

    monkeypatch.setattr(factory, "download_weights", offline)
    monkeypatch.delenv("DGTRS_GEO_MODEL", raising=False)
    code = main(
        ["localize", str(raster), "x", "-o", str(tmp_path / "o"), "--model", "dgtrs-clip-vit-b-16"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "offline" in err and "--model PATH" in err and "dgtrs-geo demo" in err


def test_demo_offline_runs_with_labelled_random_model(tmp_path, capsys, monkeypatch) -> None:
    import dgtrs_geo.models.factory as factory
    from dgtrs_geo.models import WeightsUnavailableError

    def offline(entry, **kwargs):
        raise WeightsUnavailableError("not cached and no network")

    monkeypatch.setattr(factory, "download_weights", offline)
    monkeypatch.delenv("DGTRS_GEO_MODEL", raising=False)
    out_dir = tmp_path / "demo"
    code = main(["demo", "-o", str(out_dir), "--scales", "128", "256", "--query", "a lake"])
    assert code == 0
    captured = capsys.readouterr()
    assert "OFFLINE" in captured.err and "RANDOM-WEIGHT" in captured.err
    assert "rmnp-rgb.tif" in captured.err
    assert "'a lake': best at x=" in captured.out and "(EPSG:4326)" in captured.out
    for suffix in (".tif", ".gpkg", ".png"):
        assert (out_dir / f"a-lake{suffix}").is_file()
    with rasterio.open(out_dir / "a-lake.tif") as src:
        # The 485 x 373 px sample at cells of 128 / 16 = 8 px, georeferenced like the sample.
        assert src.crs.to_epsg() == 4326 and (src.width, src.height) == (61, 47)
        with rasterio.open(sample_raster()) as sample:
            # 61 x 47 cells of nominally 8 px, stretched to end on the sample's edges.
            assert src.transform == sample.transform @ Affine.scale(485 / 61, 373 / 47)
        assert src.tags()["model_id"].startswith("RANDOM-WEIGHTS-dgtrs-tiny-")


def test_index_list_and_prune(tmp_path, capsys) -> None:
    import json
    import os
    import time

    from test_localization_api import RednessModel, _raster

    from dgtrs_geo.localization import build_index

    idx = tmp_path / "idx"
    rasters = {
        name: _raster(tmp_path / f"{name}.tif", "EPSG:32633", from_origin(1000, 9000, 1, 1))
        for name in ("kept", "old", "gone")
    }
    built = {name: build_index(path, RednessModel(), scales=(64,), index_dir=idx)
             for name, path in rasters.items()}  # fmt: skip
    assert main(["index", "--list", "--index-dir", str(idx), "--json"]) == 0
    rows = {Path(row["raster"]).stem: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(rasters)
    for name, index in built.items():
        row = rows[name]
        assert Path(row["path"]) == index.path and row["windows"] == len(index)
        assert row["model"] == "redness-v1" and row["problem"] is None
        assert row["size_bytes"] == sum(
            f.stat().st_size for f in index.path.rglob("*") if f.is_file()
        )
    assert main(["index", "--list", "--index-dir", str(idx)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4 and all("redness-v1" in line for line in table[1:])
    # One raster deleted, one index unused for ten days.
    rasters["gone"].unlink()
    ten_days_ago = time.time() - 10 * 86400
    os.utime(built["old"].path, (ten_days_ago, ten_days_ago))
    assert main(["index", "--prune", "--index-dir", str(idx)]) == 0
    assert capsys.readouterr().out == f"removed {built['gone'].path}\n"
    assert main(["index", "--prune", "--older-than", "5", "--index-dir", str(idx)]) == 0
    assert capsys.readouterr().out == f"removed {built['old'].path}\n"
    assert built["kept"].path.is_dir() and not built["old"].path.exists()
    assert main(["index", "--older-than", "5", "--index-dir", str(idx)]) == 2
    assert "--older-than goes with --prune" in capsys.readouterr().err
    assert main(["index"]) == 2
    assert "give a RASTER to index, or --list / --prune" in capsys.readouterr().err
