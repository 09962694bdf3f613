"""Localization against answers computed here: fast maps, polygons, stretches, index locations.

``RednessModel`` embeds a window as (r, 1 - r), normalised, where r is the window's mean of
``clip((R - G) / 255, 0, 1)``; the text "red" is (1, 0). With windows as large as the model's
input there is no resize, so a window's score is a function of its pixels that numpy computes
here without any of the project's code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import Polygon

from dgtrs_geo.localization import build_index, fast_probability_map, localize
from dgtrs_geo.localization.polygons import heatmap_polygons

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


class RednessModel:
    """Known answers: see the module docstring. ``seen`` keeps the uint8 windows it was given."""

    mean = tuple(MEAN.flatten().tolist())
    std = tuple(STD.flatten().tolist())
    device = torch.device("cpu")
    preprocess = None

    def __init__(self, image_size: int = 16, model_id: str = "redness-oracle") -> None:
        self.image_size = image_size
        self.model_id = model_id
        self.seen: list[np.ndarray] = []
        self.image_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        rgb = x.float() * STD + MEAN
        self.seen += list(torch.round(rgb * 255).clamp(0, 255).to(torch.uint8).numpy())
        red = (rgb[:, 0] - rgb[:, 1]).clamp(0, 1).mean(dim=(1, 2))
        return F.normalize(torch.stack([red, 1 - red], dim=1), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


def _windows(height: int, width: int, s: int) -> set[tuple[int, int]]:
    """The recipe's two grids of stride ``s`` at offsets 0 and ``s / 2``, clamped to the edges."""
    return {
        (min(x, width - s), min(y, height - s))
        for offset in (0, s // 2)
        for y in range(offset, height, s)
        for x in range(offset, width, s)
    }


def _red_score(crop: np.ndarray) -> float:
    r = np.clip((crop[..., 0].astype(float) - crop[..., 1]) / 255, 0, 1).mean()
    return r / np.hypot(r, 1 - r)


def _brute_force_mean(image: np.ndarray, scales) -> np.ndarray:
    """Each pixel's mean score over the windows covering it, one window at a time."""
    height, width = image.shape[:2]
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for s in scales:
        for x, y in _windows(height, width, s):
            total[y : y + s, x : x + s] += _red_score(image[y : y + s, x : x + s])
            count[y : y + s, x : x + s] += 1
    return total / count


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def _scene(height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(7)
    image = rng.integers(60, 120, size=(height, width, 3)).astype(np.uint8)
    image[8:30, 20:44] = (240, 20, 20)  # off-centre, in the top half: orientation shows
    image[70:80, 96:104] = (180, 90, 60)  # a weaker red patch lower right
    return image


# --- fast maps ---------------------------------------------------------------------------------


def test_fast_map_is_the_per_pixel_mean_of_window_scores() -> None:
    image = _scene()
    got = fast_probability_map(image, "a red roof", RednessModel(16), scales=(16,), sigma=0)
    expected = _minmax(_brute_force_mean(image, (16,)))
    assert got.shape == image.shape[:2]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Flipped upside down or left-right, the map would be far off: the comparison can fail.
    assert np.abs(np.flipud(expected) - expected).max() > 0.5
    assert np.abs(np.fliplr(expected) - expected).max() > 0.5
    row, col = np.unravel_index(np.argmax(got), got.shape)
    assert 8 <= row < 30 and 20 <= col < 44


def test_fast_map_default_smoothing_is_a_quarter_window_gaussian() -> None:
    from scipy import ndimage

    image = _scene()
    mean = _brute_force_mean(image, (16,))
    smoothed = fast_probability_map(image, "red", RednessModel(16), scales=(16,))
    # Default sigma: a quarter of the smallest window, 4 px here.
    expected = _minmax(ndimage.gaussian_filter(mean, 4.0, mode="nearest"))
    np.testing.assert_allclose(smoothed, expected, atol=1e-4)
    assert np.abs(smoothed - _minmax(mean)).max() > 0.05  # smoothing did something
    assert np.abs(np.flipud(expected) - expected).max() > 0.5


def test_fast_map_on_coarse_cells_keeps_place_and_orientation() -> None:
    # 64 px windows: cells of 64 / 16 = 4 px, upsampled back to the image.
    image = np.full((192, 256, 3), 90, np.uint8)
    image[16:64, 32:96] = (240, 20, 20)
    got = fast_probability_map(image, "red", RednessModel(64), scales=(64,), sigma=0)
    expected = _minmax(_brute_force_mean(image, (64,)))
    assert got.shape == (192, 256)
    # Cell-wise it is the same map; bilinear upsampling moves values by less than a cell.
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98
    assert np.corrcoef(np.flipud(got).ravel(), expected.ravel())[0, 1] < 0.5
    assert got[40, 64] == pytest.approx(1.0, abs=0.05) and got[160, 220] < 0.05


# --- polygons ----------------------------------------------------------------------------------

# Threshold 0.5. Region A: three cells (an L), scores 0.6, 0.8, 1.0. Cells B1 and B2 touch only
# at a corner: two regions under 4-connectivity. C sits exactly at the threshold. NaN is never in.
GRID = np.full((6, 8), 0.2)
GRID[1, 1], GRID[1, 2], GRID[2, 1] = 0.6, 0.8, 1.0
GRID[3, 4], GRID[4, 5] = 0.7, 0.9
GRID[5, 7] = 0.5
GRID[0, 7] = np.nan
CELLS = {"A": [(1, 1), (1, 2), (2, 1)], "B2": [(4, 5)], "B1": [(3, 4)], "C": [(5, 7)]}


def _cell_union(cells, transform: Affine) -> Polygon:
    from shapely.ops import unary_union

    squares = []
    for row, col in cells:
        corners = [transform @ (col + dx, row + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
        squares.append(Polygon(corners))
    return unary_union(squares)


def _geodesic_area(polygon: Polygon, crs: str) -> float:
    """Area on the WGS 84 ellipsoid, edges split into 1000 pieces, computed with pyproj alone."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = np.asarray(polygon.exterior.coords)
    points = [
        a + t * (b - a) for a, b in zip(ring[:-1], ring[1:], strict=True)
        for t in np.linspace(0, 1, 1000, endpoint=False)
    ]  # fmt: skip
    lon, lat = to_lonlat.transform(*np.array(points).T)
    return abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])


def test_polygons_scores_and_four_connectivity() -> None:
    transform = from_origin(0, 6, 1, 1)
    frame = heatmap_polygons(GRID, transform, None, 0.5, query="q")
    assert list(frame.columns) == ["query", "score_max", "score_mean", "area", "geometry"]
    assert (frame["query"] == "q").all()
    # Sorted by score_max: A (1.0), B2 (0.9), B1 (0.7), C (0.5, included: >= threshold).
    assert frame["score_max"].tolist() == pytest.approx([1.0, 0.9, 0.7, 0.5])
    assert frame["score_mean"].tolist() == pytest.approx([0.8, 0.9, 0.7, 0.5])
    for geometry, name in zip(frame.geometry, ("A", "B2", "B1", "C"), strict=True):
        assert geometry.equals(_cell_union(CELLS[name], transform)), name
    assert frame["area"].tolist() == pytest.approx([3.0, 1.0, 1.0, 1.0])  # square pixels
    above = heatmap_polygons(GRID, transform, None, 0.95)
    assert len(above) == 1 and above["score_mean"].iloc[0] == pytest.approx(1.0)
    assert heatmap_polygons(GRID, transform, None, 1.5).empty


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        # At the UTM zone's central meridian the scale factor is 0.9996: planar m^2 are 0.08 %
        # smaller than the ground's.
        ("EPSG:32633", from_origin(500000, 4100000, 10, 10)),
        ("EPSG:32633", from_origin(200000, 7000000, 30, 30)),
        ("EPSG:4326", from_origin(10.0, 50.0, 0.001, 0.001)),
        ("EPSG:4326", from_origin(-70.0, -60.0, 0.01, 0.005)),
    ],
)
def test_polygon_areas_are_geodesic_square_metres(crs: str, transform: Affine) -> None:
    frame = heatmap_polygons(GRID, transform, CRS.from_string(crs), 0.5)
    assert frame.crs == CRS.from_string(crs)
    for name, area, geometry in zip(
        ("A", "B2", "B1", "C"), frame["area"], frame.geometry, strict=True
    ):
        expected = _geodesic_area(_cell_union(CELLS[name], transform), crs)
        assert geometry.equals(_cell_union(CELLS[name], transform))
        # A tenth of the planar area's error at the central meridian (8e-4): room for a fast
        # ellipsoidal formula, none for square map units.
        assert area == pytest.approx(expected, rel=1e-4), name
        assert abs(geometry.area - expected) > 1e-4 * expected  # map units are not the answer


# --- raster reading: stretches -----------------------------------------------------------------


def _uint16_raster(path: Path) -> np.ndarray:
    rng = np.random.default_rng(2)
    data = np.stack(
        [rng.integers(0, 400, (16, 16)), rng.integers(100, 1300, (16, 16)), np.full((16, 16), 77)]
    ).astype(np.uint16)
    profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 3, "dtype": "uint16"}
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=from_origin(0, 16, 1, 1), **profile
    ) as dst:
        dst.write(data)
    return data


def test_stretch_none_and_an_explicit_stretch_reach_the_model(tmp_path: Path) -> None:
    from dgtrs_geo.localization import Stretch

    data = _uint16_raster(tmp_path / "scene.tif")
    # One 16 px window over the whole raster, the model's input size: the model sees the pixels.
    model = RednessModel(16)
    localize(tmp_path / "scene.tif", "red", model, scales=(16,), stretch="none",
             index_dir=tmp_path / "a")  # fmt: skip
    (seen,) = model.seen
    np.testing.assert_array_equal(seen, np.clip(data, 0, 255).astype(np.uint8))
    stretch = Stretch(low=(0.0, 100.0, 0.0), high=(400.0, 1300.0, 154.0))
    model = RednessModel(16)
    localize(tmp_path / "scene.tif", "red", model, scales=(16,), stretch=stretch,
             index_dir=tmp_path / "b")  # fmt: skip
    (seen,) = model.seen
    low = np.array([0.0, 100.0, 0.0])[:, None, None]
    high = np.array([400.0, 1300.0, 154.0])[:, None, None]
    expected = np.clip((data - low) * 255 / (high - low), 0, 255)
    assert np.abs(seen.astype(float) - expected).max() <= 1.0  # within a rounding step
    assert np.abs(seen[2].astype(float) - 127.5).max() <= 1.0  # 77 of 0..154: mid-grey


# --- where indexes go --------------------------------------------------------------------------


def _rgb_raster(path: Path) -> Path:
    data = np.full((3, 64, 64), 90, np.uint8)
    data[0, 8:24, 8:24] = 250
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint8"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=from_origin(0, 64, 1, 1), **profile
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture
def no_cache_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user with no DGTRS_GEO_CACHE and no XDG_CACHE_HOME: home is a fresh folder."""
    monkeypatch.delenv("DGTRS_GEO_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_index_lives_next_to_the_raster_and_is_reused(tmp_path, no_cache_variable) -> None:
    raster = _rgb_raster(tmp_path / "data" / "scene.tif")
    model = RednessModel(16)
    index = build_index(raster, model, scales=(16,))
    assert index.path is not None and index.path.is_relative_to(raster.parent)
    assert not any(no_cache_variable.rglob("*.npy"))
    calls = model.image_calls
    localize(raster, "red", model, scales=(16,))
    assert model.image_calls == calls  # read back from beside the raster


@pytest.mark.parametrize("xdg", [False, True], ids=["home-cache", "xdg-cache-home"])
def test_index_goes_to_the_user_cache_when_the_raster_folder_is_read_only(
    tmp_path, no_cache_variable, monkeypatch, xdg: bool
) -> None:
    import os

    raster = _rgb_raster(tmp_path / "readonly" / "scene.tif")
    readonly = raster.parent
    real_access = os.access

    def access(path, mode, *args, **kwargs) -> bool:
        # Root ignores permission bits: deny writes under the raster's folder explicitly.
        if mode & os.W_OK and Path(path).resolve().is_relative_to(readonly.resolve()):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    if xdg:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    readonly.chmod(0o555)
    try:
        index = build_index(raster, RednessModel(16), scales=(16,))
    finally:
        readonly.chmod(0o755)
    cache = tmp_path / "xdg" if xdg else no_cache_variable / ".cache"
    assert index.path is not None and index.path.is_relative_to(cache / "dgtrs-geo")
    assert sorted(p.name for p in readonly.iterdir()) == ["scene.tif"]


def test_dgtrs_geo_cache_takes_every_index(tmp_path, no_cache_variable, monkeypatch) -> None:
    raster = _rgb_raster(tmp_path / "data" / "scene.tif")
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "mine"))
    index = build_index(raster, RednessModel(16), scales=(16,))
    assert index.path is not None and index.path.is_relative_to(tmp_path / "mine")
    assert not any(no_cache_variable.rglob("*"))
    assert [p.name for p in raster.parent.iterdir()] == ["scene.tif"]
