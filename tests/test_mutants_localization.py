"""Tests written from the mutation run on localization: each pins a behaviour a surviving mutant changed.

Expected values come from independent computations (SciPy's median and Gaussian filters, a
brute-force per-pixel mean, hand-made cases); benchmarks/results/mutation-triage.md lists the
mutants each test kills and the survivors that are equivalent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from test_oracle_localization import RednessModel, _brute_force_mean, _minmax

from dgtrs_geo.localization import fast_probability_map
from dgtrs_geo.localization.heatmap import smooth
from dgtrs_geo.localization.reference import reference_finish
from dgtrs_geo.localization.windows import scales_to_pixels


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
