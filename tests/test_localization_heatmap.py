from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dgtrs_geo.localization.heatmap import (
    accumulate,
    grid_shape,
    grid_transform,
    grid_windows,
    normalise,
    smooth,
)
from dgtrs_geo.localization.polygons import heatmap_polygons, polygon_areas
from dgtrs_geo.localization.windows import plan_windows


def _brute_force_mean(windows: np.ndarray, scores: np.ndarray, height: int, width: int):
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (col, row, w, h), s in zip(windows, scores, strict=True):
        for y in range(row, row + h):
            for x in range(col, col + w):
                total[y, x] += s
                count[y, x] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def test_accumulate_equals_per_pixel_mean_on_a_plan() -> None:
    plan = plan_windows(23, 17, scales=(5, 8, 30))
    scores = np.random.default_rng(0).normal(size=len(plan))
    boxes, shape = grid_windows(plan.windows, plan.region, cell=1)
    got = accumulate(boxes, scores, shape)
    np.testing.assert_allclose(got, _brute_force_mean(plan.windows, scores, 17, 23), atol=1e-6)


def test_accumulate_random_windows_leaves_gaps_nan_and_many_queries() -> None:
    rng = np.random.default_rng(1)
    cols, rows = rng.integers(0, 15, 12), rng.integers(0, 9, 12)
    windows = np.stack([cols, rows, rng.integers(1, 6, 12), rng.integers(1, 6, 12)], axis=1)
    windows[:, 2] = np.minimum(windows[:, 2], 20 - windows[:, 0])
    windows[:, 3] = np.minimum(windows[:, 3], 12 - windows[:, 1])
    scores = rng.normal(size=(12, 3))
    boxes, shape = grid_windows(windows, (0, 0, 20, 12), cell=1)
    got = accumulate(boxes, scores, shape)
    assert got.shape == (3, 12, 20)
    for q in range(3):
        expected = _brute_force_mean(windows, scores[:, q], 12, 20)
        np.testing.assert_array_equal(np.isnan(got[q]), np.isnan(expected))
        np.testing.assert_allclose(got[q], expected, atol=1e-6)


def test_coarse_grid_cells_and_region_offset() -> None:
    # A 4-cell grid over region columns 10..18: window 10..14 covers cells 0-1, 14..18 cells 2-3.
    windows = np.array([[10, 0, 4, 4], [14, 0, 4, 4]])
    boxes, shape = grid_windows(windows, (10, 0, 8, 4), cell=2)
    assert shape == (2, 4)
    np.testing.assert_array_equal(boxes, [[0, 0, 2, 2], [2, 0, 4, 2]])
    np.testing.assert_allclose(accumulate(boxes, np.array([1.0, 3.0]), shape)[0], [1, 1, 3, 3])


def test_normalise_modes() -> None:
    heat = np.array([[0.1, 0.3], [np.nan, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(normalise(heat, "minmax"), [[0, 1], [np.nan, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(normalise(heat, "cosine"), heat)
    assert (normalise(np.full((2, 2), 0.3), "minmax") == 0).all()
    with pytest.raises(ValueError, match="minmax"):
        normalise(heat, "zscore")


def test_smooth_ignores_and_keeps_nan() -> None:
    heat = np.ones((9, 9), dtype=np.float32)
    heat[:, :3] = np.nan
    out = smooth(heat, 2.0)
    assert np.isnan(out[:, :3]).all()
    # Normalised convolution: a constant stays constant next to the NaN edge.
    np.testing.assert_allclose(out[:, 3:], 1.0, atol=1e-6)
    spike = np.zeros((9, 9), dtype=np.float32)
    spike[4, 4] = 1
    blurred = smooth(spike, 1.0)
    assert blurred[4, 4] < 1 and blurred[4, 5] > 0 and np.isclose(blurred.sum(), 1, atol=1e-3)
    np.testing.assert_array_equal(smooth(spike, 0), spike)


def test_windows_at_the_edge_cover_the_last_partial_cell() -> None:
    # 10 px wide at 4 px cells: 3 cells, the last one half outside; the window ends at the edge.
    boxes, shape = grid_windows(np.array([[0, 0, 10, 4], [0, 0, 4, 4]]), (0, 0, 10, 4), cell=4)
    assert shape == (1, 3)
    np.testing.assert_array_equal(boxes, [[0, 0, 3, 1], [0, 0, 1, 1]])


def _brute_force_centres(windows, scores, region, shape) -> np.ndarray:
    """Mean score of the windows containing each cell's centre, in exact rational arithmetic."""
    col0, row0, width, height = region
    rows, cols = shape
    out = np.full(shape, np.nan)
    for i in range(rows):
        cy = row0 + Fraction(2 * i + 1, 2) * Fraction(height, rows)
        for j in range(cols):
            cx = col0 + Fraction(2 * j + 1, 2) * Fraction(width, cols)
            covering = [
                s
                for (c, r, w, h), s in zip(windows.tolist(), scores, strict=True)
                if c <= cx < c + w and r <= cy < r + h
            ]
            if covering:
                out[i, j] = sum(covering) / len(covering)
    return out


@pytest.mark.parametrize(
    ("size", "region", "cell"),
    [((23, 17), (0, 0, 23, 17), 4), ((23, 17), (3, 2, 15, 11), 4), ((40, 9), (0, 0, 40, 9), 3)],
)
def test_fractional_cells_hold_the_mean_of_windows_covering_their_centres(
    size: tuple[int, int], region: tuple[int, int, int, int], cell: int
) -> None:
    # Windows of the whole raster, some only partly inside the region (an AOI cut from an index).
    windows = plan_windows(*size, scales=(5, 8, 30)).windows
    scores = np.random.default_rng(2).normal(size=len(windows))
    boxes, shape = grid_windows(windows, region, cell)
    assert shape == (-(-region[3] // cell), -(-region[2] // cell))
    expected = _brute_force_centres(windows, scores, region, shape)
    got = accumulate(boxes, scores, shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_grid_transform_covers_the_region_exactly() -> None:
    # A 30 m scene 7001 x 5003 px at 16 px cells: the old grid overhung by 15 px east and 13 south.
    transform = from_origin(500000, 4000000, 30, 30)
    region = (0, 0, 7001, 5003)
    shape = grid_shape(region, 16)
    assert shape == (313, 438)
    grid = grid_transform(transform, region, shape)
    np.testing.assert_allclose(grid @ (0, 0), transform @ (0, 0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(grid @ (438, 313), transform @ (7001, 5003), rtol=0, atol=1e-6)
    # An AOI region: the grid's corners are the region's corners.
    aoi = grid_transform(transform, (100, 50, 333, 211), grid_shape((100, 50, 333, 211), 16))
    np.testing.assert_allclose(aoi @ (0, 0), transform @ (100, 50), rtol=0, atol=1e-6)
    np.testing.assert_allclose(aoi @ (21, 14), transform @ (433, 261), rtol=0, atol=1e-6)


def _zone_area(lon0: float, lon1: float, lat0: float, lat1: float) -> float:
    """Area of a longitude-latitude rectangle on the WGS 84 ellipsoid (closed form, authalic)."""
    a, f = 6378137.0, 1 / 298.257223563
    b, e = a * (1 - f), np.sqrt(f * (2 - f))

    def q(lat: float) -> float:
        s = np.sin(np.radians(lat))
        return s / (1 - e**2 * s**2) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return float(np.radians(lon1 - lon0) * b**2 / 2 * (q(lat1) - q(lat0)))


def _mercator(lon: float, lat: float) -> tuple[float, float]:
    r = 6378137.0
    return r * np.radians(lon), r * np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))


def _block_polygon(transform, crs) -> float:
    """Area of the one polygon over the top-left 2 x 2 cells of a 4 x 4 heatmap."""
    heat = np.zeros((4, 4), np.float32)
    heat[:2, :2] = 1
    frame = heatmap_polygons(heat, transform, crs, 0.5)
    assert len(frame) == 1
    return float(frame["area"].iloc[0])


def test_polygon_area_is_geodesic_in_every_crs() -> None:
    expected = _zone_area(10, 11, 50, 51)  # about 7,960 km²
    # EPSG:4326: the rectangle lon 10..11, lat 50..51 directly.
    area = _block_polygon(from_origin(10, 51, 0.5, 0.5), CRS.from_epsg(4326))
    np.testing.assert_allclose(area, expected, rtol=1e-6)
    # Web Mercator: the same rectangle; a planar area would be 2.5 times too large here.
    (x0, y0), (x1, y1) = _mercator(10, 50), _mercator(11, 51)
    transform = Affine((x1 - x0) / 2, 0, x0, 0, -(y1 - y0) / 2, y1)
    area = _block_polygon(transform, CRS.from_epsg(3857))
    np.testing.assert_allclose(area, expected, rtol=1e-6)
    assert (x1 - x0) * (y1 - y0) > 2 * expected
    # UTM 33N: a 1 km square on the central meridian at the equator, where the grid's scale
    # factor is 0.9996 in every direction, so the ground area is 1 km² / 0.9996².
    area = _block_polygon(from_origin(499500, 1000, 500, 500), CRS.from_epsg(32633))
    np.testing.assert_allclose(area, 1e6 / 0.9996**2, rtol=1e-6)
    # No CRS: square pixels.
    assert _block_polygon(from_origin(0, 4, 1, 1), None) == 4.0


def test_polygon_area_subtracts_holes() -> None:
    heat = np.zeros((6, 7), np.float32)
    heat[:4, :] = 1
    heat[1, 1] = 0  # a hole of one cell
    heat[1:3, 4] = 0  # and one of two cells, inside 28 cells
    heat[5, 0] = 1  # and a separate cell below
    frame = heatmap_polygons(heat, from_origin(499000, 1000, 100, 100), CRS.from_epsg(32633), 0.5)
    assert [len(g.interiors) for g in frame.geometry if g.area > 2e4] == [2]
    areas = sorted(frame["area"])
    np.testing.assert_allclose(areas, np.array([1, 25]) * 1e4 / 0.9996**2, rtol=1e-5)


def test_written_heatmap_and_polygons_stay_inside_the_raster_and_the_aoi(
    tmp_path: Path, tiny_model
) -> None:
    # 203 x 131 px at 5 px cells: the old grid of 41 x 27 whole cells overhung by 2 px east
    # and 4 px south.
    from dgtrs_geo.localization import localize

    raster = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 203, "height": 131, "count": 3, "dtype": "uint8"}
    transform = from_origin(500000, 4000000, 30, 30)
    rng = np.random.default_rng(0)
    with rasterio.open(raster, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(rng.integers(0, 255, (3, 131, 203), dtype=np.uint8))
    kwargs = {"scales": (80,), "index_dir": tmp_path / "idx", "threshold": 0.0}
    outputs = ("heatmap", "polygons")
    (result,) = localize(
        raster, "a red roof", tiny_model, out_dir=tmp_path / "o", outputs=outputs, **kwargs
    )
    with rasterio.open(raster) as src, rasterio.open(result.paths["heatmap"]) as out:
        assert out.shape == (27, 41)
        np.testing.assert_allclose(out.bounds, src.bounds, rtol=0, atol=1e-6)
    polygons = result.polygons
    assert polygons.total_bounds[0] >= src.bounds.left - 1e-6
    assert polygons.total_bounds[1] >= src.bounds.bottom - 1e-6
    assert polygons.total_bounds[2] <= src.bounds.right + 1e-6
    assert polygons.total_bounds[3] <= src.bounds.top + 1e-6
    # Threshold 0 of a min-max map: one polygon over the whole raster, 6090 m x 3930 m.
    np.testing.assert_allclose(polygons.total_bounds, list(src.bounds), rtol=0, atol=1e-6)
    np.testing.assert_allclose(polygons["area"].sum(), 6090 * 3930 / 0.9996**2, rtol=1e-5)
    # An AOI: the grid covers its pixel region (columns 17..150, rows 9..100) exactly.
    aoi = (500000 + 17 * 30, 4000000 - 100 * 30, 500000 + 150 * 30, 4000000 - 9 * 30)
    (inside,) = localize(
        raster, "a red roof", tiny_model, aoi=aoi, out_dir=tmp_path / "a", outputs=outputs, **kwargs
    )
    with rasterio.open(inside.paths["heatmap"]) as out:
        np.testing.assert_allclose(out.bounds, aoi, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("epsg", "ring"),
    [
        # UTM 33N at 60 degrees north: a 40 km quadrilateral with long diagonal edges.
        (32633, [(480000, 6650000), (520000, 6660000), (515000, 6700000), (470000, 6690000)]),
        # UTM 60N across the antimeridian (longitudes from 178.9 E to 179.2 W).
        (32660, [(700000, 1000000), (900000, 1000000), (900000, 1100000), (700000, 1100000)]),
        # Antarctic polar stereographic: a square of 400 km around the South Pole.
        (3031, [(-200000, -200000), (200000, -200000), (200000, 200000), (-200000, 200000)]),
        # Web Mercator, a tilted quadrilateral at 55 degrees north.
        (3857, [(1.0e6, 7.3e6), (1.2e6, 7.35e6), (1.15e6, 7.5e6), (0.95e6, 7.45e6)]),
    ],
)
def test_polygon_areas_match_pyproj_geod(epsg: int, ring: list[tuple[float, float]]) -> None:
    from pyproj import Geod
    from rasterio.warp import transform as warp

    crs = CRS.from_epsg(epsg)
    polygon = shapely.Polygon(ring)
    # The reference: edges cut into 50 m pieces, so geodesic and map-straight edges coincide.
    fine = shapely.get_coordinates(shapely.segmentize(polygon, 50.0))
    lon, lat = warp(crs, "EPSG:4326", fine[:, 0], fine[:, 1])
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])
    (area,) = polygon_areas([polygon], crs)
    # Edges of 1 km: the trapezoid rule in longitude is coarsest around a pole.
    np.testing.assert_allclose(area, expected, rtol=1e-5 if epsg == 3031 else 1e-6)
    if epsg == 3031:
        assert 1.5e11 < area < 1.7e11  # about the 400 km square, shrunk by the projection's scale
