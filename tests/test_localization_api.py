"""The localization pipeline end to end, with a colour model whose answers are known.

``RednessModel`` embeds an image as (redness, 1 - redness) and the text "red" as (1, 0), so the
score of a window is a known function of how much planted red it holds: georeferencing, nodata,
polygons and index reuse are checked against the planted square's position.
"""

import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import Affine, from_origin
from shapely.geometry import Point, Polygon

from dgtrs_geo.errors import InputError, OutputError
from dgtrs_geo.localization import (
    Cancelled,
    EmbeddingIndex,
    IndexMismatchError,
    build_index,
    localize,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class RednessModel:
    def __init__(self, model_id: str = "redness-v1") -> None:
        self.model_id = model_id
        self.image_size = 16
        self.mean, self.std = MEAN, STD
        self.device = torch.device("cpu")
        self.preprocess = None
        self.image_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        rgb = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        red = (rgb[:, 0] - rgb[:, 1]).clamp(0, 1).mean(dim=(1, 2))
        return F.normalize(torch.stack([red, 1 - red], dim=1), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = [[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts]
        return torch.tensor(rows)


SQUARE = (160, 32, 64, 64)  # col, row, width, height of the planted red square


def _raster(path: Path, crs: str | None, transform, nodata_cols: int = 0, bands: int = 3) -> Path:
    data = np.full((bands, 256, 256), 90, np.uint8)
    col, row, w, h = SQUARE
    data[0, row : row + h, col : col + w] = 250
    data[1:3, row : row + h, col : col + w] = 10
    nodata = None
    if nodata_cols:
        data[:, :, :nodata_cols] = 0
        nodata = 0
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": bands, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(data)
    return path


def _cos(red_share: float) -> float:
    red = red_share * (250 - 10) / 255
    return red / np.hypot(red, 1 - red)


def _square_bounds(transform) -> tuple[float, float, float, float]:
    col, row, w, h = SQUARE
    x0, y0 = transform @ (col, row)
    x1, y1 = transform @ (col + w, row + h)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32633", from_origin(500000, 4000000, 10, 10)),
        ("EPSG:3857", from_origin(-1.2e6, 6.5e6, 0.5, 0.5)),
        ("EPSG:4326", from_origin(10.0, 50.0, 0.0001, 0.0001)),
    ],
)
def test_planted_square_lands_on_its_map_coordinates(tmp_path: Path, crs, transform) -> None:
    raster = _raster(tmp_path / "scene.tif", crs, transform)
    (result,) = localize(raster, "red roof", RednessModel(), scales=(64,), index_dir=tmp_path)
    minx, miny, maxx, maxy = _square_bounds(transform)
    assert minx <= result.best[0] <= maxx and miny <= result.best[1] <= maxy
    assert result.crs == rasterio.crs.CRS.from_string(crs)
    # Fast mode: cells of a sixteenth of the smallest window (64 / 16 = 4 px).
    assert result.transform == transform @ Affine.scale(4) and result.heatmap.shape == (64, 64)
    assert result.heatmap.dtype == np.float32
    assert np.nanmin(result.heatmap) == 0 and np.nanmax(result.heatmap) == 1
    centre = Point((minx + maxx) / 2, (miny + maxy) / 2)
    assert result.polygons.geometry.iloc[0].contains(centre)
    assert result.polygons.crs == result.crs
    # The window on the square: redness r = (250 - 10) / 255, embedding (r, 1 - r).
    assert result.score_max == pytest.approx(_cos(1.0), abs=1e-5)


def test_outputs_are_georeferenced_files(tmp_path: Path) -> None:
    transform = from_origin(500000, 4000000, 10, 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", transform)
    out = tmp_path / "out"
    results = localize(
        raster,
        ["red roof", "grass"],
        RednessModel(),
        out_dir=out,
        outputs=("heatmap", "polygons", "geojson", "overlay"),
        scales=(64,),
        index_dir=tmp_path / "idx",
    )
    red = results[0]
    assert set(red.paths) == {"heatmap", "polygons", "geojson", "overlay"}
    with rasterio.open(red.paths["heatmap"]) as src:
        assert src.crs.to_epsg() == 32633 and src.transform == transform @ Affine.scale(4)
        assert src.dtypes[0] == "float32" and src.tags()["query"] == "red roof"
        np.testing.assert_array_equal(src.read(1), red.heatmap)
    polygons = gpd.read_file(red.paths["polygons"])
    assert list(polygons.columns) == ["query", "score_max", "score_mean", "area", "geometry"]
    assert polygons.crs.to_epsg() == 32633 and (polygons["query"] == "red roof").all()
    # Square metres in a metre CRS: the top polygon covers at least the 640 m x 640 m square.
    assert polygons["area"].iloc[0] >= 640 * 640
    assert gpd.read_file(red.paths["geojson"]).crs.to_epsg() == 4326
    assert red.paths["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results[1].paths["heatmap"].name == "grass.tif"
    assert not list(out.glob(".*")), "temporary files left behind"


def test_second_query_reuses_index_without_encoding(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1))
    model = RednessModel()
    localize(raster, "red", model, scales=(64,), index_dir=tmp_path)
    calls = model.image_calls
    assert calls > 0
    localize(raster, ["red car", "blue"], model, scales=(64,), index_dir=tmp_path)
    assert model.image_calls == calls
    # Another plan is another index.
    localize(raster, "red", model, scales=(128,), index_dir=tmp_path)
    assert model.image_calls > calls
    calls = model.image_calls
    # A rewritten raster is re-encoded.
    _raster(raster, "EPSG:32633", from_origin(1000, 2000, 2, 2))
    localize(raster, "red", model, scales=(64,), index_dir=tmp_path)
    assert model.image_calls > calls


def test_index_format_and_mismatch(tmp_path: Path) -> None:
    transform = from_origin(500000, 4000000, 10, 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", transform)
    index = build_index(raster, RednessModel(), scales=(64,), index_dir=tmp_path / "idx")
    loaded = EmbeddingIndex.load(index.path)
    assert loaded.meta["model_id"] == "redness-v1" and loaded.meta["count"] == len(loaded)
    assert loaded.meta["plan"]["scales"] == [64]
    # Footprint of window (0, 0, 64, 64): 640 m on a side from the origin.
    first = np.flatnonzero((loaded.windows[:, :2] == 0).all(axis=1))[0]
    np.testing.assert_allclose(
        loaded.footprints[first], [500000, 4000000 - 640, 500000 + 640, 4000000]
    )
    np.testing.assert_allclose(np.linalg.norm(loaded.embeddings, axis=1), 1, atol=1e-6)
    with pytest.raises(IndexMismatchError, match="built with model 'redness-v1'"):
        localize(raster, "red", RednessModel("other-model"), scales=(64,), index=index.path)
    with pytest.raises(IndexMismatchError, match="window plan"):
        localize(raster, "red", RednessModel(), scales=(32,), index=loaded)


def test_nodata_is_nan_and_mostly_nodata_windows_are_skipped(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "nd.tif", "EPSG:32633", from_origin(0, 256, 1, 1), nodata_cols=96)
    model = RednessModel()
    (result,) = localize(raster, "red", model, scales=(64,), index_dir=tmp_path)
    assert np.isnan(result.heatmap[:, : 96 // 4]).all()
    assert np.isfinite(result.heatmap[:, 96 // 4 :]).all()
    index = build_index(raster, model, scales=(64,), index_dir=tmp_path)
    # Windows starting at columns 0 and 32 are at least half nodata and are skipped.
    assert index.windows[:, 0].min() == 64
    all_nodata = _raster(tmp_path / "empty.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1), 256)
    with pytest.raises(ValueError, match="all nodata"):
        localize(all_nodata, "red", model, scales=(64,), index_dir=tmp_path)


def test_four_band_raster_and_band_errors(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "ms.tif", "EPSG:32633", from_origin(0, 256, 1, 1), bands=4)
    (result,) = localize(raster, "red", RednessModel(), scales=(64,), bands=[1, 2, 3])
    assert result.score_max == pytest.approx(_cos(1.0), abs=1e-5)
    # Reading band 4 as red: band 4 holds no planted square (90 everywhere, like green).
    (flat,) = localize(raster, "red", RednessModel(), scales=(64,), bands=[4, 2, 3])
    assert flat.score_max < 0.5
    with pytest.raises(ValueError, match="band index 7 is out of range"):
        localize(raster, "red", RednessModel(), bands=[7, 2, 1])


def test_aoi_bbox_limits_the_heatmap(tmp_path: Path) -> None:
    transform = from_origin(500000, 4000000, 10, 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", transform)
    aoi = (500000 + 1280, 4000000 - 1280, 500000 + 2560, 4000000)  # columns 128..256, rows 0..128
    (result,) = localize(raster, "red", RednessModel(), scales=(32,), aoi=aoi, index_dir=tmp_path)
    assert result.heatmap.shape == (64, 64)  # 128 px at 32 / 16 = 2 px cells
    assert result.transform == transform @ Affine.translation(128, 0) @ Affine.scale(2)
    minx, miny, maxx, maxy = _square_bounds(transform)
    assert minx <= result.best[0] <= maxx and miny <= result.best[1] <= maxy
    with pytest.raises(ValueError, match="does not overlap"):
        localize(raster, "red", RednessModel(), aoi=(0, 0, 1, 1), index_dir=tmp_path)


def test_cancel_leaves_no_index_and_no_outputs(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1))
    cancel = threading.Event()
    seen: list[float] = []

    def progress(fraction: float, message: str) -> None:
        seen.append(fraction)
        if fraction > 0.2:
            cancel.set()

    with pytest.raises(Cancelled):
        localize(
            raster,
            "red",
            RednessModel(),
            scales=(32,),
            batch_size=8,
            out_dir=tmp_path / "out",
            index_dir=tmp_path / "idx",
            progress=progress,
            cancel=cancel,
        )
    assert seen and max(seen) < 0.9
    # No index and no temporary folder; only the index's (empty) lock file may stay.
    left = [p.name for p in (tmp_path / "idx").glob("*") if not p.name.endswith(".lock")]
    assert left == [] and [p.stat().st_size for p in (tmp_path / "idx").glob("*")] in ([], [0])
    assert not any((tmp_path / "out").iterdir())


def test_failed_write_removes_this_runs_files(tmp_path: Path, monkeypatch) -> None:
    import dgtrs_geo.localization.writers as writers

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_overlay", broken)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1))
    with pytest.raises(OSError, match="disk full"):
        localize(raster, "red", RednessModel(), scales=(64,), out_dir=tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_progress_reaches_one_and_bad_inputs(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1))
    seen: list[tuple[float, str]] = []
    localize(raster, "red", RednessModel(), scales=(64,), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        localize(raster, ["red", "  "], RednessModel())
    with pytest.raises(ValueError, match="non-empty"):
        localize(raster, [], RednessModel())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        localize(raster, "red", RednessModel(), out_dir=blocker / "sub")
    with pytest.raises(InputError, match="normalise"):
        localize(raster, "red", RednessModel(), normalise="softmax")
    with pytest.raises(TypeError, match="loaded model"):
        localize(raster, "red", object())


def test_cosine_mode_keeps_raw_scores_and_absolute_threshold(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(1000, 2000, 1, 1))
    (result,) = localize(raster, "red", RednessModel(), scales=(64,), normalise="cosine", smooth=0)
    # Inside the square the two covering windows are the one on it and a quarter-red one.
    expected = (_cos(1.0) + _cos(0.25)) / 2
    assert result.heatmap[40 // 4, 190 // 4] == pytest.approx(expected, abs=1e-3)
    assert result.threshold == 0.25 and result.normalise == "cosine"


def test_scales_in_metres_on_geographic_raster(tmp_path: Path) -> None:
    # 0.0001 degree at 50 N is about 7.2 m x 11.1 m; 640 m windows are about 70 px.
    raster = _raster(tmp_path / "geo.tif", "EPSG:4326", from_origin(10.0, 50.0, 0.0001, 0.0001))
    index = build_index(raster, RednessModel(), scales=(640,), scale_unit="m", index_dir=tmp_path)
    assert set(index.windows[:, 2]) == {70}
    with pytest.raises(ValueError, match="only 1 px"):
        build_index(raster, RednessModel(), scales=(10,), scale_unit="m")


def test_aoi_vector_file_masks_outside_its_geometry(tmp_path: Path) -> None:
    transform = from_origin(500000, 4000000, 10, 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", transform)
    minx, miny, maxx, maxy = _square_bounds(transform)
    # A triangle around the square, given in WGS 84: reprojected to the raster's CRS.
    triangle = Polygon(
        [(minx - 300, miny - 300), (maxx + 300, miny - 300), (minx - 300, maxy + 300)]
    )
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[triangle], crs="EPSG:32633").to_crs("EPSG:4326").to_file(aoi)
    (result,) = localize(raster, "red", RednessModel(), scales=(32,), aoi=aoi, index_dir=tmp_path)
    rows, cols = result.heatmap.shape
    centres = [
        Point(result.transform @ (c + 0.5, r + 0.5)) for r in range(rows) for c in range(cols)
    ]
    inside = np.array([triangle.contains(p) for p in centres]).reshape(rows, cols)
    clear = np.array([triangle.exterior.distance(p) > 1 for p in centres]).reshape(rows, cols)
    assert inside.any() and (~inside & clear).any()
    np.testing.assert_array_equal(np.isfinite(result.heatmap)[clear], inside[clear])


def test_uint16_raster_smaller_than_windows_and_png_without_crs(tmp_path: Path) -> None:
    path = tmp_path / "small16.tif"
    data = np.full((3, 40, 60), 1000, np.uint16)
    data[0, 10:30, 30:50] = 4000
    profile = {"driver": "GTiff", "width": 60, "height": 40, "count": 3, "dtype": "uint16"}
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=from_origin(0, 400, 10, 10), **profile
    ) as dst:
        dst.write(data)
    # Default scales (256..768 px) all exceed the raster: one window, the whole raster.
    (result,) = localize(path, "red", RednessModel(), index_dir=tmp_path)
    # Cells of a sixteenth of the one 60 px window: 3 px, so a 14 x 20 grid covering it all.
    assert result.heatmap.shape == (14, 20)
    assert np.isfinite(result.heatmap).all()
    png = tmp_path / "plain.png"
    image = np.full((64, 64, 3), 90, np.uint8)
    image[8:24, 40:56] = (250, 10, 10)
    from PIL import Image

    Image.fromarray(image).save(png)
    with pytest.warns(UserWarning, match="pixel coordinates"):
        (plain,) = localize(png, "red", RednessModel(), scales=(16,), index_dir=tmp_path)
    assert plain.crs is None
    # Pixel coordinates: x = column, y = row.
    assert 40 <= plain.best[0] <= 56 and 8 <= plain.best[1] <= 24


def test_index_stores_the_nodata_mask_of_the_default_grid(tmp_path: Path, monkeypatch) -> None:
    raster = _raster(tmp_path / "nd.tif", "EPSG:32633", from_origin(0, 256, 1, 1), nodata_cols=96)
    index = build_index(raster, RednessModel(), scales=(64,), index_dir=tmp_path)
    assert index.meta["valid_cell"] == 4 and index.valid.shape == (64, 64)
    assert not index.valid[:, :24].any() and index.valid[:, 24:].all()
    loaded = EmbeddingIndex.load(index.path)
    np.testing.assert_array_equal(loaded.valid, index.valid)
    # Queries on the default grid use the stored mask instead of reading the raster's.
    from dgtrs_geo.localization.raster import RasterSource

    def unexpected(*args, **kwargs):
        raise AssertionError("the raster's mask was read again")

    monkeypatch.setattr(RasterSource, "valid_grid", unexpected)
    (result,) = localize(raster, "red", RednessModel(), scales=(64,), index_dir=tmp_path)
    assert np.isnan(result.heatmap[:, :24]).all() and np.isfinite(result.heatmap[:, 24:]).all()


def test_no_region_above_threshold_writes_an_empty_typed_layer(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(0, 256, 1, 1))
    # Raw cosine cells are means of window scores, at most _cos(1.0) < 1: none reaches 1.
    (result,) = localize(
        raster, "red", RednessModel(), scales=(64,), normalise="cosine", threshold=1.0,
        out_dir=tmp_path / "o", outputs=("polygons",), index_dir=tmp_path,
    )  # fmt: skip
    assert _cos(1.0) < 1.0 and np.nanmax(result.heatmap) < 1.0
    assert result.polygons.empty and set(result.paths) == {"polygons"}
    layer = gpd.read_file(result.paths["polygons"])
    assert layer.empty and list(layer.columns) == [
        "query",
        "score_max",
        "score_mean",
        "area",
        "geometry",
    ]
    assert layer.crs.to_epsg() == 32633


def test_aoi_inside_an_indexed_raster_reuses_the_whole_index(tmp_path: Path) -> None:
    transform = from_origin(500000, 4000000, 10, 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", transform)
    model = RednessModel()
    whole = build_index(raster, model, scales=(64,), index_dir=tmp_path)
    calls = model.image_calls
    aoi = (
        500000 + 1200,
        4000000 - 1500,
        500000 + 2500,
        4000000 - 100,
    )  # cols 120..250, rows 10..150
    (result,) = localize(raster, "red", model, scales=(64,), aoi=aoi, index_dir=tmp_path)
    assert model.image_calls == calls
    # 130 x 140 px at nominal 4 px cells: 33 x 35 cells stretched to end on the AOI's edges.
    assert result.heatmap.shape == (35, 33)
    assert result.transform == transform @ Affine.translation(120, 10) @ Affine.scale(130 / 33, 4)
    minx, miny, maxx, maxy = _square_bounds(transform)
    assert minx <= result.best[0] <= maxx and miny <= result.best[1] <= maxy
    part = build_index(raster, model, scales=(64,), aoi=aoi, index_dir=tmp_path)
    assert part.path is None and part.meta["subset_of"] == str(whole.path)
    # Windows overlapping columns 120..250 and rows 10..150, and no others.
    w = part.windows
    assert ((w[:, 0] < 250) & (w[:, 0] + w[:, 2] > 120) & (w[:, 1] < 150)).all()
    assert len(part) < len(whole)
    # The worker's way: the subset passed back in as ``index`` fits the AOI's plan.
    localize(raster, "red", model, scales=(64,), aoi=aoi, index=part)


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("shape", [(5000, 1), (1, 5000)])
def test_overlay_of_a_strip_stays_small(tmp_path: Path, shape: tuple[int, int]) -> None:
    rows, cols = shape
    path = tmp_path / "strip.tif"
    profile = {"driver": "GTiff", "width": cols, "height": rows, "count": 3, "dtype": "uint8"}
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=from_origin(0, 1e5, 10, 10), **profile
    ) as dst:
        dst.write(np.full((3, rows, cols), 90, np.uint8))
    (result,) = localize(
        path,
        "red",
        RednessModel(),
        out_dir=tmp_path / "o",
        outputs=("overlay",),
        index_dir=tmp_path,
    )
    width, height = _png_size(result.paths["overlay"])
    # Measured before the bound: 731 x 181,332 px for a 1 x 5000 strip.
    assert max(width, height) <= 4096 and min(width, height) >= 100


def test_overlay_title_of_a_5000_word_query_is_cut(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(0, 256, 1, 1))
    long_query = " ".join(["red"] * 5000)
    kwargs = {"scales": (64,), "outputs": ("overlay",), "index_dir": tmp_path}
    (short,) = localize(raster, "red", RednessModel(), out_dir=tmp_path / "a", **kwargs)
    (long,) = localize(raster, long_query, RednessModel(), out_dir=tmp_path / "b", **kwargs)
    # Measured before: 761 x 6910 px. Now the title wraps to at most three lines inside the
    # figure, whose size depends on the map alone.
    assert _png_size(long.paths["overlay"]) == _png_size(short.paths["overlay"])
    assert max(_png_size(long.paths["overlay"])) <= 4096
    assert len(long.paths["overlay"].name) <= 64


def test_non_latin_queries_get_readable_distinct_names(tmp_path: Path) -> None:
    import hashlib

    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(0, 256, 1, 1))
    queries = ["红色屋顶", "Café au lait", "लाल छत", "🏠🌳", "🌲", "red 🏠"]
    results = localize(
        raster, queries, RednessModel(), scales=(64,), out_dir=tmp_path / "o",
        outputs=("heatmap", "geojson"), index_dir=tmp_path,
    )  # fmt: skip
    names = [r.paths["heatmap"].name for r in results]

    def hashed(text: str) -> str:
        return "query-" + hashlib.sha256(text.encode()).hexdigest()[:8] + ".tif"

    assert names == [
        "红色屋顶.tif", "café-au-lait.tif", "लाल-छत.tif", hashed("🏠🌳"), hashed("🌲"), "red.tif",
    ]  # fmt: skip
    for result in results:
        with rasterio.open(result.paths["heatmap"]) as src:
            assert src.tags()["query"] == result.query


def test_geojson_layer_is_named_after_the_query(tmp_path: Path) -> None:
    import pyogrio

    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(0, 256, 1, 1))
    query = "a red  roof\nby the road"
    long_query = "red " * 50
    results = localize(
        raster, [query, long_query], RednessModel(), scales=(64,), out_dir=tmp_path / "o",
        outputs=("geojson",), index_dir=tmp_path,
    )  # fmt: skip
    assert pyogrio.list_layers(results[0].paths["geojson"])[0][0] == "a red roof by the road"
    long_name = pyogrio.list_layers(results[1].paths["geojson"])[0][0]
    assert long_name == long_query.strip()[:99] + "…"
