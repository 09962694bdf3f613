"""Tests written from the mutation run on localization: each pins a behaviour a surviving mutant changed.

Expected values come from independent computations (SciPy's median and Gaussian filters, a
brute-force per-pixel mean, pyproj.Geod areas, hand-made cases);
benchmarks/results/mutation-triage.md lists the mutants each test kills and the survivors that
are equivalent.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.affinity
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import Polygon, box
from shapely.geometry.polygon import orient
from test_oracle_localization import GRID, RednessModel, _brute_force_mean, _minmax

from dgtrs_geo.localization import fast_probability_map
from dgtrs_geo.localization.heatmap import accumulate, grid_windows, normalise, smooth
from dgtrs_geo.localization.polygons import heatmap_polygons, polygon_areas
from dgtrs_geo.localization.reference import reference_finish
from dgtrs_geo.localization.windows import plan_windows, scales_to_pixels


def test_fast_map_smoothing_on_coarse_cells_is_in_pixels() -> None:
    # 64 px windows give cells of 4 px; sigma=12 is in pixels (3 cells), whatever the cell.
    image = np.full((192, 256, 3), 90, np.uint8)
    image[16:64, 32:96] = (240, 20, 20)
    got = fast_probability_map(image, "red", RednessModel(64), scales=(64,), sigma=12)
    expected = _minmax(ndimage.gaussian_filter(_brute_force_mean(image, (64,)), 12, mode="nearest"))
    # Cells of 4 px and bilinear upsampling move values by a few hundredths at most.
    assert np.abs(got - expected).max() < 0.06
    too_little = _minmax(
        ndimage.gaussian_filter(_brute_force_mean(image, (64,)), 3, mode="nearest")
    )
    assert np.abs(too_little - expected).max() > 0.1  # sigma in cells, not pixels, would show
    # Upsampled bilinearly: along the slope right of the square neighbours differ (nearest-
    # neighbour upsampling would repeat each cell's value over 4 px).
    slope = got[20:60, 100:140]
    assert np.mean(np.diff(slope, axis=1) == 0) < 0.05


def test_fast_map_refuses_an_empty_query() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^the query is empty: describe what to find"):
        fast_probability_map(image, "  ", RednessModel(16), scales=(16,))


@pytest.mark.parametrize("sigma", [0.0, 1.5])
@pytest.mark.parametrize("with_nan", [False, True])
def test_smooth_returns_float32_in_every_branch(sigma: float, with_nan: bool) -> None:
    heatmap = np.arange(48, dtype=np.float64).reshape(6, 8)
    if with_nan:
        heatmap[0, 0] = np.nan
    out = smooth(heatmap, sigma)
    assert out.dtype == np.float32 and out.shape == (6, 8)
    assert np.isnan(out[0, 0]) == with_nan


def test_smooth_far_from_any_value_is_nan_without_warnings() -> None:
    # One finite cell in a sea of nodata: beyond the Gaussian's reach 0 / 0 must stay quiet.
    heatmap = np.full((40, 40), np.nan)
    heatmap[2, 2] = 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = smooth(heatmap, 1.0)
    assert out[2, 2] == pytest.approx(0.7) and np.isnan(out).sum() == 40 * 40 - 1


def _recipe_by_hand(mean_scores: np.ndarray) -> np.ndarray:
    """Min-max, NaN as 0, uint8 truncation, 251 px median with replicated edges, / 255."""
    finite = np.isfinite(mean_scores)
    lo, hi = mean_scores[finite].min(), mean_scores[finite].max()
    p = np.where(finite, (mean_scores - lo) / (hi - lo), 0.0)
    gray = ndimage.median_filter((255.0 * p).astype(np.uint8), size=251, mode="nearest")
    out = gray / 255.0
    out[~finite] = np.nan
    return out


def test_reference_finish_matches_the_recipe_and_keeps_nodata_as_zero() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(0.2, 0.05, size=(60, 70))
    scores[:, :25] = np.nan  # a wide nodata band: as 0 it pulls the medians down, as 1 up
    got = reference_finish(scores)
    expected = _recipe_by_hand(scores)
    assert got.dtype == np.float32 and got.shape == (60, 70)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[:, 25:], expected[:, 25:], atol=1e-7)


def test_reference_finish_jpeg_roundtrip_is_optional_and_grey() -> None:
    rng = np.random.default_rng(4)
    scores = np.linspace(0, 1, 80)[None, :] + rng.normal(0, 0.3, size=(60, 80))
    plain = reference_finish(scores)
    np.testing.assert_allclose(plain, _recipe_by_hand(scores), atol=1e-7)  # no JPEG by default
    jpeg = reference_finish(scores, jpeg_roundtrip=True)
    assert jpeg.shape == (60, 80) and jpeg.dtype == np.float32
    # JPEG at quality 95 moves a smooth grey map by a few levels, not more.
    assert 0 < np.abs(jpeg - plain).max() <= 6 / 255


def test_scales_to_pixels_values_and_errors() -> None:
    assert scales_to_pixels([0.5, 2.0, 100.0], 0.25) == (2, 8, 400)
    assert scales_to_pixels([0.1], 10.0) == (1,)  # never below one pixel
    for bad in ([], [0.0, 10.0], [-5.0]):
        with pytest.raises(
            ValueError, match=rf"positive sizes in metres, got {bad}".replace("[", r"\[")
        ):
            scales_to_pixels(bad, 1.0)
    with pytest.raises(ValueError, match="ground sample distance"):
        scales_to_pixels([10.0], 0.0)


def _mean_of_covering_boxes(boxes: np.ndarray, scores: np.ndarray, shape) -> np.ndarray:
    """Per-cell mean of the scores of the boxes (x0, y0, x1, y1, end exclusive) covering it."""
    out = np.full(shape, np.nan)
    for r in range(shape[0]):
        for c in range(shape[1]):
            hit = [s for (x0, y0, x1, y1), s in zip(boxes.tolist(), scores, strict=True)
                   if x0 <= c < x1 and y0 <= r < y1]  # fmt: skip
            if hit:
                out[r, c] = sum(hit) / len(hit)
    return out


def test_accumulate_takes_narrow_integer_boxes_and_returns_float32() -> None:
    # uint8 boxes on a 20 x 30 grid: flattened corner indices reach 650, past uint8's range.
    rng = np.random.default_rng(5)
    x0, y0 = rng.integers(0, 25, 12), rng.integers(0, 15, 12)
    boxes = np.stack([x0, y0, x0 + rng.integers(1, 6, 12), y0 + rng.integers(1, 6, 12)], 1)
    scores = rng.normal(size=(12, 2)).astype(np.float32)
    got = accumulate(boxes.astype(np.uint8), scores, (20, 30))
    assert got.dtype == np.float32 and got.shape == (2, 20, 30)
    for q in range(2):
        expected = _mean_of_covering_boxes(boxes, scores[:, q].astype(np.float64), (20, 30))
        np.testing.assert_array_equal(np.isnan(got[q]), np.isnan(expected))
        np.testing.assert_allclose(got[q], expected, atol=1e-6)
    single = accumulate(boxes, scores[:, 0], (20, 30))
    assert single.dtype == np.float32 and single.shape == (20, 30)


def test_grid_windows_of_narrow_integer_windows_are_int64_cell_bounds() -> None:
    # Cell j of 12 over 36 px has its centre at 3 j + 1.5: a window [c, c + w) covers the cells
    # with c <= 3 j + 1.5 < c + w. uint16 windows: 2 * offset * cells passes 65535.
    windows = np.array([[0, 0, 36, 36], [3, 4, 9, 2], [2, 30, 2, 6], [35, 35, 1, 1]])
    for dtype in (np.int32, np.uint16):
        boxes, shape = grid_windows(windows.astype(dtype) * 100, (0, 0, 3600, 3600), 300)
        assert shape == (12, 12) and boxes.dtype == np.int64
        expected = []
        for c, r, w, h in windows.tolist():
            xs = [j for j in range(12) if c <= 3 * j + 1.5 < c + w] or [0]
            ys = [i for i in range(12) if r <= 3 * i + 1.5 < r + h] or [0]
            expected.append([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
        covered = [(x1 > x0) and (y1 > y0) for x0, y0, x1, y1 in boxes.tolist()]
        assert covered == [True, True, False, False]  # the last two cover no centre
        np.testing.assert_array_equal(boxes[:2], np.array(expected)[:2])


def test_heatmap_polygons_sorted_frame_has_a_fresh_index_and_an_empty_query() -> None:
    # In raster order the regions are A, B1, B2, C; sorted by score_max they are A, B2, B1, C.
    frame = heatmap_polygons(GRID, from_origin(0, 6, 1, 1), None, 0.5)
    assert frame.index.equals(pd.RangeIndex(4))
    assert frame.loc[1, "score_max"] == pytest.approx(0.9)  # B2, by label, not B1's 0.7
    assert frame["query"].tolist() == [""] * 4


def test_empty_heatmap_polygons_have_the_column_types_of_a_full_frame() -> None:
    # An empty GeoPackage must get the same field types as a full one (text query, real scores).
    transform, crs = from_origin(500000, 4100000, 10, 10), CRS.from_epsg(32633)
    full = heatmap_polygons(GRID, transform, crs, 0.5, query="q")
    empty = heatmap_polygons(GRID, transform, crs, 1.5, query="q")
    assert len(empty) == 0 and list(empty.columns) == list(full.columns)
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()
    assert empty.crs == full.crs and empty.geometry.name == "geometry"
    assert empty.index.equals(pd.RangeIndex(0))


def _geod_area(polygon: Polygon, crs: str, step: float) -> float:
    """Area on the WGS 84 ellipsoid with pyproj alone: edges split every ``step`` CRS units."""
    dense = orient(shapely.segmentize(polygon, step))  # Geod signs rings by their orientation
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lonlat = shapely.transform(dense, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))
    return abs(Geod(ellps="WGS84").geometry_area_perimeter(lonlat)[0])


def test_polygon_areas_subtract_holes_of_every_polygon_and_keep_empty_ones() -> None:
    crs = "EPSG:32633"
    first = box(500_000, 4_100_000, 503_000, 4_102_000)
    holed = Polygon(
        [(600_000, 4_200_000), (608_000, 4_200_000), (608_000, 4_205_000), (600_000, 4_205_000)],
        holes=[[(602_000, 4_201_000), (605_000, 4_201_000), (605_000, 4_203_000)]],
    )
    got = polygon_areas([first, holed, Polygon()], CRS.from_string(crs))
    expected = [_geod_area(first, crs, 10.0), _geod_area(holed, crs, 10.0), 0.0]
    # 1 km pieces leave 2e-7 on the short diagonal of the hole; counted as an exterior, the hole
    # would add 16 %.
    assert got == pytest.approx(expected, rel=1e-6)
    assert polygon_areas([], CRS.from_string(crs)) == []


@pytest.mark.parametrize(
    ("crs", "polygon", "step"),
    [
        # A long diagonal edge in degrees: straight in lon/lat, not along a parallel.
        ("EPSG:4326", Polygon([(10, 0), (14, 0), (10, 12)]), 0.002),
        # A 200 km square turned 30 degrees, in a CRS whose unit is the kilometre.
        (
            "+proj=utm +zone=33 +datum=WGS84 +units=km +no_defs",
            shapely.affinity.rotate(box(300, 4000, 500, 4200), 30),
            0.2,
        ),
        # Long in one direction only, less than one 1 km piece across, where the coordinates'
        # signs and sizes differ: the longer side alone decides the splitting.
        ("EPSG:4326", Polygon([(30, -20), (30.008, -20), (30, -8)]), 0.0005),
        ("EPSG:4326", Polygon([(-14, 50), (-10, 50), (-10, 50.008)]), 0.0005),
        ("EPSG:32633", Polygon([(300e3, 4100e3), (500e3, 4100e3), (500e3, 4100.9e3)]), 10.0),
        ("EPSG:32633", Polygon([(200e3, 100e3), (400e3, 100e3), (400e3, 100.9e3)]), 10.0),
    ],
)
def test_polygon_areas_follow_long_edges_in_any_unit(
    crs: str, polygon: Polygon, step: float
) -> None:
    # Measured vertex to vertex, these edges would be off by 8e-5 to 9e-3; split into 1 km pieces
    # they are within 3e-7.
    expected = _geod_area(polygon, crs, step)
    assert polygon_areas([polygon], CRS.from_string(crs)) == pytest.approx([expected], rel=1e-6)


@pytest.mark.parametrize("side", [8, 6])
def test_plan_on_an_axis_the_window_spans_has_only_the_offset_zero_grid(side: int) -> None:
    # s = 8 on a side of 8 or 6 px: one window spans that side and the half-offset grid is empty
    # (the QGIS dock's window count assumes so). Along 20 px: starts 0, 8, 16 -> 12; the
    # half-offset starts 4 and 12 belong to that empty grid.
    w = min(8, side)
    tall = plan_windows(side, 20, scales=(8,))
    assert {tuple(v) for v in tall.windows.tolist()} == {(0, r, w, 8) for r in (0, 8, 12)}
    wide = plan_windows(20, side, scales=(8,))
    assert {tuple(v) for v in wide.windows.tolist()} == {(c, 0, 8, w) for c in (0, 8, 12)}
    assert tall.windows.dtype == np.int64 and len(tall) == 3


def test_window_plan_to_json_names_its_parameters() -> None:
    plan = plan_windows(100, 100, scales=(8, 16), region=(40, 50, 20, 12))
    assert json.loads(json.dumps(plan.to_json())) == {
        "scales": [8, 16],
        "width": 100,
        "height": 100,
        "region": [40, 50, 20, 12],
        "count": len(plan.windows),
    }


def test_plan_windows_takes_one_pixel_windows_and_refuses_empty_or_outside_areas() -> None:
    plan = plan_windows(3, 2, scales=(1,))
    assert {tuple(v) for v in plan.windows.tolist()} == {
        (c, r, 1, 1) for c in (0, 1, 2) for r in (0, 1)
    }
    for width, height in ((10, 0), (0, 10), (-1, 10)):
        with pytest.raises(
            ValueError, match=rf"^raster size must be positive, got {width} x {height}$"
        ):
            plan_windows(width, height, scales=(4,))
    with pytest.raises(
        ValueError, match=r"^window scales must be positive pixel sizes, got \(4, 0\)$"
    ):
        plan_windows(10, 10, scales=(4, 0))
    for region in (
        (0, 0, 0, 5),
        (0, 0, 5, 0),
        (-1, 0, 5, 5),
        (0, -1, 5, 5),
        (6, 0, 5, 5),
        (0, 6, 5, 5),
    ):
        with pytest.raises(ValueError, match=r"does not fit in the 10 x 10 raster"):
            plan_windows(10, 10, scales=(4,), region=region)


def test_polygon_area_of_a_ring_balanced_across_the_equator() -> None:
    # Vertex latitudes 0, -0.004, 0, 0.004, 0 cancel exactly (the ring's side of the equator is
    # undecided), and the ring is shorter than one 1 km piece, so it is measured as given.
    diamond = Polygon([(0, 0), (0.004, -0.004), (0.008, 0), (0.004, 0.004)])
    expected = _geod_area(diamond, "EPSG:4326", 0.00001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = polygon_areas([diamond], CRS.from_epsg(4326))
    assert got == pytest.approx([expected], rel=1e-6)


def test_plan_windows_are_sorted_by_width_when_heights_are_clamped_alike() -> None:
    # 100 x 20 px, s = 32 and 64: every window is 20 px tall and starts on row 0; the 32 px
    # ones (columns 0, 32, 64, 96 -> 68; the half-offset grid has no rows) come first.
    plan = plan_windows(100, 20, scales=(64, 32))
    expected = [(c, 0, 32, 20) for c in (0, 32, 64, 68)] + [(c, 0, 64, 20) for c in (0, 36)]
    assert [tuple(w) for w in plan.windows.tolist()] == expected


def test_normalise_defaults_to_minmax_and_returns_float32() -> None:
    heatmap = np.array([[0.2, 0.6], [np.nan, 0.3]])
    got = normalise(heatmap)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.0, 1.0], [np.nan, 0.25]], atol=1e-7)
    flat = normalise(np.array([[0.4, 0.4], [np.nan, 0.4]]))
    np.testing.assert_array_equal(flat, [[0.0, 0.0], [np.nan, 0.0]])
    assert normalise(heatmap, "cosine").dtype == np.float32
    assert normalise(np.full((2, 2), np.nan)).dtype == np.float32


def test_polygons_in_a_local_crs_have_planar_areas_in_its_unit() -> None:
    # A site grid in metres has no place on the Earth: no geodesic area, and no traceback.
    local = CRS.from_wkt(
        'LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    )
    grid = np.zeros((4, 5))
    grid[1, 1:4] = 0.9  # three cells of 10 m x 10 m in a row
    frame = heatmap_polygons(grid, from_origin(1000, 2000, 10, 10), local, 0.5, "site")
    assert len(frame) == 1 and frame["area"].tolist() == [300.0]
    assert frame.geometry[0].bounds == (1010.0, 1980.0, 1040.0, 1990.0)  # row 1: 10-20 m down
