"""Tests written from the mutation run on the localization writers and raster reading.

Each pins a behaviour a surviving mutant of ``dgtrs_geo/localization/writers.py`` or
``raster.py`` changed; the triage (equivalent mutants and why) is listed in
benchmarks/results/mutation-triage.md. Expected values are worked out here by hand: PNGs are read
back with PIL (and the drawn matplotlib figure is caught on its way to ``savefig``), GeoTIFFs with
rasterio, GeoPackages with sqlite3, decimated reads with numpy slicing.
"""

from __future__ import annotations

import errno
import pickle
import sqlite3
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from matplotlib.figure import Figure
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Compression
from rasterio.transform import from_origin
from shapely.geometry import box
from test_localization_raster import _write

from dgtrs_geo.errors import OutputError
from dgtrs_geo.localization import writers
from dgtrs_geo.localization.raster import (
    ArraySource,
    RasterSource,
    Stretch,
    ground_sample_distance,
)
from dgtrs_geo.localization.session import LocalizationResult
from dgtrs_geo.localization.writers import (
    check_space,
    check_writable,
    disk_free,
    out_of_space,
    output_stem,
    overlay_size,
    wrap_title,
    write_heatmap,
    write_overlay,
    write_polygons,
    write_results,
)

# 80 m wide, 40 m tall: aspect 0.5, so the figure is 8 + 1.6 by 4 + 1.2 inches, 960 x 520 px.
EXTENT = (500000.0, 500080.0, 3999960.0, 4000000.0)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every matplotlib figure saved during the test, kept for its texts and axes positions."""
    saved: list[Figure] = []
    original = Figure.savefig

    def savefig(self: Figure, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _map_box(fig: Figure) -> tuple[float, float, float, float]:
    """The map axes' ``(top, bottom, left, right)`` in PNG pixel rows and columns."""
    box_ = fig.axes[0].get_window_extent()
    height = fig.bbox.height
    return height - box_.y1, height - box_.y0, box_.x0, box_.x1


def _inside(png: np.ndarray, fig: Figure) -> tuple[np.ndarray, int, int]:
    """The PNG's RGB pixels inside the map, spines left out, and the first row and column."""
    top, bottom, left, right = _map_box(fig)
    r0, c0 = int(np.ceil(top)) + 2, int(np.ceil(left)) + 2
    return png[r0 : int(bottom) - 2, c0 : int(right) - 2, :3], r0, c0


# --- PNG overlay ---------------------------------------------------------------------------------


def test_overlay_size_is_worked_out_from_the_aspect() -> None:
    """8 in map + 1.6 in margin wide; shrunk so the long side stays 4096 px (40.96 in)."""
    assert overlay_size(0.5) == pytest.approx((9.6, 5.2))
    # A tall map: 80 in high would not fit, so it shrinks by 39.76 / 80 on both sides.
    shrink = (40.96 - 1.2) / 80
    assert overlay_size(10.0) == pytest.approx((8 * shrink + 1.6, 40.96))
    # A very wide one: the height is kept to at least one inch.
    assert overlay_size(0.001) == pytest.approx((9.6, 2.2))


def test_overlay_png_puts_the_map_over_its_extent(tmp_path: Path, figures: list[Figure]) -> None:
    """Pixel size, map units on the axes, a hot cell where it lies, a map filling the figure."""
    image = np.full((3, 20, 40), 128, np.uint8)
    heatmap = np.full((4, 8), np.nan)
    heatmap[1, 2], heatmap[3, 7] = 1.0, 0.0
    path = write_overlay(tmp_path / "o.png", image, heatmap, EXTENT, "red", valid=None)
    png = np.asarray(Image.open(path))
    assert png.shape == (520, 960, 4)
    fig = figures[-1]
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx(EXTENT[:2]) and ax.get_ylim() == pytest.approx(EXTENT[2:])
    inside, r0, c0 = _inside(png, fig)
    # The opaque grey image shows everywhere the heatmap is NaN.
    assert (inside == 128).all(axis=-1).mean() > 0.9
    # inferno(1) = (252, 255, 164) at alpha 0.55 over grey 128: (196, 197, 148).
    rows, cols = np.nonzero((np.abs(inside.astype(int) - (196, 197, 148)) <= 2).all(axis=-1))
    top, bottom, left, right = _map_box(fig)
    cell_h, cell_w = (bottom - top) / 4, (right - left) / 8
    assert rows.min() + r0 == pytest.approx(top + cell_h, abs=1.5)
    assert rows.max() + r0 + 1 == pytest.approx(top + 2 * cell_h, abs=1.5)
    assert cols.min() + c0 == pytest.approx(left + 2 * cell_w, abs=1.5)
    assert cols.max() + c0 + 1 == pytest.approx(left + 3 * cell_w, abs=1.5)
    # Constrained layout: the map takes most of the width (the default subplot margins, 72 %).
    assert (right - left) / 960 > 0.8
    for text in (ax.title, fig.axes[1].yaxis.label):
        extent = text.get_window_extent()
        assert extent.x0 >= 0 and extent.x1 <= 960 and extent.y0 >= 0 and extent.y1 <= 520


def test_overlay_layers_use_nearest_neighbour(tmp_path: Path, figures: list[Figure]) -> None:
    """Cells stay sharp at a 2 to 2.5x zoom (matplotlib's default, hanning, smooths them)."""
    image = np.zeros((3, 200, 400), np.uint8)
    image[0, :, 0::2] = 255  # red and black columns
    heatmap = np.zeros((160, 320))
    heatmap[0::2] = 1.0  # rows alternately 1 and 0
    path = write_overlay(tmp_path / "o.png", image, heatmap, EXTENT, "red")
    inside, _, _ = _inside(np.asarray(Image.open(path)), figures[-1])
    # Each pixel is one image colour under one heatmap colour, blended at alpha 0.55.
    inferno = {(252, 255, 164), (0, 0, 4)}
    expected = {
        tuple(round(0.55 * h + 0.45 * i) for h, i in zip(hot, rgb, strict=True))
        for hot in inferno
        for rgb in ((255, 0, 0), (0, 0, 0))
    }
    colours = np.unique(inside.reshape(-1, 3), axis=0).astype(int)
    distance = np.abs(colours[:, None] - np.array(sorted(expected))[None]).max(axis=-1)
    assert distance.min(axis=1).max() <= 2


def test_overlay_transparency_follows_valid(tmp_path: Path, figures: list[Figure]) -> None:
    """No mask: every image pixel opaque; a mask: invalid pixels show the white axes behind."""
    image = np.zeros((3, 20, 40), np.uint8)
    heatmap = np.full((4, 8), np.nan)
    heatmap[0, 0], heatmap[0, 1] = 0.0, 1.0
    opaque = write_overlay(tmp_path / "a.png", image, heatmap, EXTENT, "t")
    valid = np.ones((20, 40), bool)
    valid[10:] = False  # the lower half is nodata
    masked = write_overlay(tmp_path / "b.png", image, heatmap, EXTENT, "t", valid=valid)
    a, _, _ = _inside(np.asarray(Image.open(opaque)), figures[0])
    b, _, _ = _inside(np.asarray(Image.open(masked)), figures[1])
    half = a.shape[0] // 2
    assert (a[half + 3 :] == 0).all()
    assert (b[half + 3 :] == 255).all()
    assert (b[half // 2 + 3 : half - 3] == 0).all()


def test_overlay_title_and_colour_bar_label(tmp_path: Path, figures: list[Figure]) -> None:
    """Query wrapped to 3 lines, the model line to 1, 9 pt; no blank line without a model line."""
    image = np.zeros((3, 20, 40), np.uint8)
    heatmap = np.linspace(0, 1, 32).reshape(4, 8)
    # 960 px / 7.5 = 128 characters a line: 12 words of 9 letters and a space (119 chars).
    words = " ".join(["abcdefghi"] * 40)
    line = " ".join(["abcdefghi"] * 12)
    write_overlay(tmp_path / "a.png", image, heatmap, EXTENT, f"{words}\n{words}")
    ax = figures[-1].axes[0]
    assert ax.get_title() == f"{line}\n{line}\n{line} …\n{line} …"
    assert ax.title.get_fontsize() == 9
    assert figures[-1].axes[1].get_ylabel() == "score"
    write_overlay(tmp_path / "b.png", image, heatmap, EXTENT, "a red roof")
    assert figures[-1].axes[0].get_title() == "a red roof"


def test_overlay_silences_only_the_axes3d_warning(tmp_path: Path, monkeypatch) -> None:
    """Debian's Axes3D warning is dropped; any other warning while loading matplotlib shows."""
    import matplotlib

    original = matplotlib.use
    said: list[str] = []

    def use(*args, **kwargs):
        for message in said:
            warnings.warn(message, UserWarning, stacklevel=2)
        return original(*args, **kwargs)

    monkeypatch.setattr(matplotlib, "use", use)
    image, heatmap = np.zeros((3, 4, 8), np.uint8), np.linspace(0, 1, 8).reshape(2, 4)
    said[:] = ["Unable to import Axes3D. This may be due to multiple versions"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_overlay(tmp_path / "a.png", image, heatmap, EXTENT, "t")
    assert not [w for w in caught if "Axes3D" in str(w.message)]
    said[:] = ["a backend note"]
    with pytest.warns(UserWarning, match="a backend note"):
        write_overlay(tmp_path / "b.png", image, heatmap, EXTENT, "t")


def test_wrap_title_joins_lines_with_newlines() -> None:
    """Three lines of at most 10 characters, the last cut with an ellipsis."""
    assert wrap_title("aaaa bbbb cccc dddd eeee ffff gggg", 9) == "aaaa bbbb\ncccc dddd\neeee …"


# --- write_results: what the overlay and the GeoJSON get -----------------------------------------


def _result(query: str, heatmap: np.ndarray, transform: Affine) -> LocalizationResult:
    polygons = gpd.GeoDataFrame(
        {"query": [query]}, geometry=[box(500000, 3999900, 500010, 3999910)], crs="EPSG:32633"
    )
    return LocalizationResult(query, heatmap, transform, CRS.from_epsg(32633), polygons)


def test_write_results_overlay_background_extent_and_nodata(
    tmp_path: Path, figures: list[Figure]
) -> None:
    """Background decimated to <= 1024 px, nodata transparent, axes on the grid's bounds."""
    data = np.full((3, 20, 2050), 90, np.uint8)
    data[:, 10:] = 0  # nodata: the lower half
    source = RasterSource(_write(tmp_path / "r.tif", data, nodata=0))
    heatmap = np.full((2, 205), np.nan, np.float32)
    transform = from_origin(500000, 4000000, 100, 100)
    result = _result("q", heatmap, transform)
    write_results([result], source, (0, 0, 2050, 20), tmp_path, ["overlay"])
    fig = figures[-1]
    ax = fig.axes[0]
    # Grid bounds: x 500000 .. 500000 + 205 * 100, y 4000000 - 200 .. 4000000.
    assert ax.get_xlim() == pytest.approx((500000, 520500))
    assert ax.get_ylim() == pytest.approx((3999800, 4000000))
    # 2050 / 1024 = 2.002: the background is 1024 x 10 pixels.
    assert ax.images[0].get_array().shape == (10, 1024, 4)
    alpha = ax.images[0].get_array()[..., 3]
    assert (alpha[:5] == 255).all() and (alpha[5:] == 0).all()


def test_geojson_layer_name_keeps_100_characters(tmp_path: Path) -> None:
    """A query of 100 characters names the layer whole; 101 are cut to 99 and an ellipsis."""
    transform = from_origin(500000, 4000000, 10, 10)
    heatmap = np.zeros((2, 2), np.float32)
    results = [_result("a" * 100, heatmap, transform), _result("b" * 101, heatmap, transform)]
    source = ArraySource(np.zeros((2, 2, 3), np.uint8))
    write_results(results, source, (0, 0, 2, 2), tmp_path, ["geojson"])
    assert pyogrio.list_layers(results[0].paths["geojson"])[0][0] == "a" * 100
    assert pyogrio.list_layers(results[1].paths["geojson"])[0][0] == "b" * 99 + "…"


# --- GeoTIFF and GeoPackage ------------------------------------------------------------------------


def test_heatmap_geotiff_profile(tmp_path: Path) -> None:
    """Float32, NaN nodata, deflate + predictor 3, 256 px tiles, band named score, georeferenced."""
    transform = from_origin(500000, 4000000, 10, 10)
    heatmap = np.linspace(0, 1, 256 * 300, dtype=np.float32).reshape(256, 300)
    path = write_heatmap(tmp_path / "h.tif", heatmap, transform, CRS.from_epsg(32633), {"q": "x"})
    with rasterio.open(path) as src:
        assert src.descriptions == ("score",)
        assert src.block_shapes == [(256, 256)] and src.profile["tiled"]
        assert src.compression == Compression.deflate
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        assert src.dtypes == ("float32",) and np.isnan(src.nodata)
        assert src.transform == transform and src.crs == CRS.from_epsg(32633)
        assert src.tags()["q"] == "x"
        np.testing.assert_array_equal(src.read(1), heatmap)


def test_geopackage_is_version_1_2(tmp_path: Path) -> None:
    """GeoPackage 1.2 (user_version 10200), which GDAL < 3.7 reads without a warning."""
    frame = gpd.GeoDataFrame({"a": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32633")
    path = write_polygons(tmp_path / "p.gpkg", frame)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (10200,)


# --- folders and free space ------------------------------------------------------------------------


def test_check_writable_tries_a_file_in_the_folder(tmp_path: Path, monkeypatch) -> None:
    """The write test happens in the folder itself (where a read-only mount would fail)."""
    import tempfile

    folders: list[object] = []
    original = tempfile.NamedTemporaryFile

    def spy(*args, **kwargs):
        folders.append(kwargs.get("dir"))
        return original(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", spy)
    assert check_writable(tmp_path / "out") == tmp_path / "out"
    assert folders == [tmp_path / "out"]


def test_disk_free_of_a_missing_folder_asks_its_nearest_parent(tmp_path: Path, monkeypatch) -> None:
    """A folder yet to be made: the free space of the nearest existing parent."""
    import shutil

    asked: list[Path] = []

    def usage(path):
        asked.append(Path(path))
        return shutil._ntuple_diskusage(100, 40, 60)  # type: ignore[attr-defined]

    monkeypatch.setattr(writers.shutil, "disk_usage", usage)
    assert disk_free(tmp_path / "a" / "b") == 60
    assert asked == [tmp_path]


def test_check_space_message_in_mib(monkeypatch) -> None:
    """Free and needed bytes both shown in MiB (2**20 bytes), one decimal."""
    monkeypatch.setattr(writers, "disk_free", lambda path: 3 * 2**20)
    with pytest.raises(OutputError) as caught:
        check_space("/out", 5 * 2**20 + 2**19, "--out-dir")
    assert str(caught.value) == (
        "/out has 3.0 MiB free but about 5.5 MiB are needed: free space there or choose another "
        "folder with --out-dir"
    )


def test_out_of_space_by_free_bytes(monkeypatch) -> None:
    """Under 1 MiB free counts as full, exactly 1 MiB does not; an unknown free space does not."""
    error = RuntimeError("Write failed")
    monkeypatch.setattr(writers, "disk_free", lambda path: 2**20 - 1)
    assert out_of_space(error, "/out")
    monkeypatch.setattr(writers, "disk_free", lambda path: 2**20)
    assert not out_of_space(error, "/out")

    def unknown(path):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writers, "disk_free", unknown)
    assert not out_of_space(error, "/out")


# --- file stems ------------------------------------------------------------------------------------


def test_output_stem_byte_limit_and_trailing_dash() -> None:
    """180 bytes kept, 181 cut; a dash left at the 60-character cut is dropped."""
    assert output_stem("红" * 60, set()) == "红" * 60  # 180 bytes
    four = "\U00020000"  # a CJK letter of 4 bytes in UTF-8
    assert output_stem("a" + four * 45, set()) == "a" + four * 44  # 181 bytes -> 177
    assert output_stem("a" * 59 + " roof", set()) == "a" * 59


# --- raster reading --------------------------------------------------------------------------------


def test_stretch_apply_values() -> None:
    """uint8 data is stretched unless the stretch is the identity; others always go to uint8."""
    data = np.array([10, 15, 20, 30], np.uint8).reshape(1, 1, 4).repeat(3, axis=0)
    got = Stretch((10.0,) * 3, (20.0,) * 3).apply(data)
    np.testing.assert_array_equal(got[0, 0], [0, 127, 255, 255])  # (15-10) * 25.5 = 127.5
    wide = np.array([0, 300], np.uint16).reshape(1, 1, 2).repeat(3, axis=0)
    got = Stretch((0.0,) * 3, (255.0,) * 3).apply(wide)
    assert got.dtype == np.uint8 and got[0, 0].tolist() == [0, 255]
    # (2 - 0.2) * 255 / 3 = 153 and (3 - 0.2) * 255 / 3 = 238 exactly. The stretch computes in
    # float32, which lands on them; float64 rounding gives 237.99999999999997 and truncates to 237.
    wide = np.array([2, 3], np.uint16).reshape(1, 1, 2).repeat(3, axis=0)
    assert Stretch((0.2,) * 3, (3.2,) * 3).apply(wide)[0, 0].tolist() == [153, 238]


def test_gsd_of_a_rotated_grid() -> None:
    """A 10 m grid rotated by 30 degrees still has 10 m pixels."""
    transform = Affine.translation(500000, 4000000) * Affine.rotation(30) * Affine.scale(10, -10)
    assert ground_sample_distance(transform, CRS.from_epsg(32633), 10, 10) == pytest.approx(10)


def test_band_choice_and_alpha_masks(tmp_path: Path) -> None:
    """Band 1 of an RGBA raster keeps the alpha mask; a plain uint8 raster has none; bad counts."""
    data = np.full((4, 4, 6), 200, np.uint8)
    data[3, :2] = 0  # alpha 0: the top two rows are transparent
    profile = {"driver": "GTiff", "width": 6, "height": 4, "count": 4, "dtype": "uint8"}
    with rasterio.open(
        tmp_path / "rgba.tif", "w", **profile, photometric="RGB", alpha="YES"
    ) as dst:
        dst.write(data)
    rgb, valid = RasterSource(tmp_path / "rgba.tif", bands=[1]).read((0, 0, 6, 4))
    assert valid.tolist() == [[False] * 6] * 2 + [[True] * 6] * 2
    assert (rgb[:, :2] == 0).all() and (rgb[:, 2:] == 200).all()
    plain = RasterSource(_write(tmp_path / "plain.tif", data[:3]))
    assert plain.valid_grid((2, 3)) is None
    with pytest.raises(
        ValueError, match=r"^give one band or three bands \(R, G, B\), got \[1, 2\]$"
    ):
        RasterSource(tmp_path / "plain.tif", bands=[1, 2])


def test_percentile_stretch_of_empty_and_constant_bands(tmp_path: Path) -> None:
    """All nodata: 0..1 on every band; a constant band: lo..lo + 1."""
    empty = np.zeros((3, 4, 4), np.uint16)
    source = RasterSource(_write(tmp_path / "empty.tif", empty, nodata=0))
    assert source.stretch == Stretch((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    flat = np.full((3, 4, 4), 700, np.uint16)
    flat[1] = np.arange(16).reshape(4, 4) * 10 + 1000
    source = RasterSource(_write(tmp_path / "flat.tif", flat))
    # Band 2 holds 1000..1150 in steps of 10: the 2nd and 98th percentiles of 16 values.
    assert source.stretch.low == pytest.approx((700, 1000 + 0.02 * 15 * 10, 700))
    assert source.stretch.high == pytest.approx((701, 1000 + 0.98 * 15 * 10, 701))


def test_raster_read_decimated_shape_and_region(tmp_path: Path) -> None:
    """200 x 100 read at 50 px: 50 x 25; a region reads that region only (nearest samples)."""
    data = (np.arange(100 * 200).reshape(1, 100, 200) % 251).astype(np.uint8).repeat(3, axis=0)
    source = RasterSource(_write(tmp_path / "r.tif", data))
    rgb, valid = source.read_decimated(50)
    assert rgb.shape == (3, 25, 50) and valid.all()
    got, _ = source.read_decimated(200, region=(10, 20, 30, 40))
    np.testing.assert_array_equal(got, data[:, 20:60, 10:40])


def test_raster_source_pickles_after_reading(tmp_path: Path) -> None:
    """An open source pickles (for DataLoader workers) and reads the same after."""
    data = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    source = RasterSource(_write(tmp_path / "r.tif", data))
    first, _ = source.read((0, 0, 5, 4))
    again, _ = pickle.loads(pickle.dumps(source)).read((0, 0, 5, 4))
    np.testing.assert_array_equal(first, data)
    np.testing.assert_array_equal(again, data)


def test_describe_keys(tmp_path: Path) -> None:
    """The description names its fields in lower case: crs as WKT, stretch as low/high."""
    source = RasterSource(_write(tmp_path / "r.tif", np.zeros((3, 2, 2), np.uint8)))
    described = source.describe()
    assert CRS.from_wkt(described["crs"]) == CRS.from_epsg(32633)
    assert described["stretch"] == {"low": [0.0, 0.0, 0.0], "high": [255.0, 255.0, 255.0]}


def test_array_source_decimated_reads_and_attributes() -> None:
    """Every ceil(side / max_side)-th pixel of the image or of a region; bands 1..3, no mask."""
    image = (np.arange(10 * 25 * 3) % 256).astype(np.uint8).reshape(10, 25, 3)
    source = ArraySource(image)
    chw = image.transpose(2, 0, 1)
    rgb, valid = source.read_decimated(10)  # ceil(25 / 10) = 3
    np.testing.assert_array_equal(rgb, chw[:, ::3, ::3])
    assert valid.shape == (4, 9) and valid.all()
    rgb, _ = source.read_decimated(5, region=(4, 2, 10, 6))  # ceil(10 / 5) = 2
    np.testing.assert_array_equal(rgb, chw[:, 2:8:2, 4:14:2])
    rgb, _ = source.read_decimated(100, region=(0, 0, 25, 10))
    np.testing.assert_array_equal(rgb, chw)
    assert source.bands == (1, 2, 3) and source.has_mask is False
