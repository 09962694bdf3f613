import numpy as np
import pytest

from dgtrs_geo.localization.heatmap import accumulate, grid_windows, normalise, smooth
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
