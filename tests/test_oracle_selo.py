"""SeLo metric details the mutation run found unchecked, each against a value worked out here.

Complements tests/test_selo.py (owned with selo.py): the order of attention centres, maps that
reach exactly 1, a peak that smooths to a single grey level, Rsu when nothing lies outside the
mask, the smallest region radius, and the messages that tell a user what to fix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dgtrs_geo.evaluation.selo import (
    attention_centres,
    check_polygons,
    region_mask,
    selo_metrics,
)


def _blob(shape: tuple[int, int], x: int, y: int, height: float, sigma: float = 15.0):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return height * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))


def test_attention_centres_come_strongest_first() -> None:
    # Two peaks more than half the 1000 px maximum filter apart: both are centres. The stronger
    # one is left and higher up, so neither descending x nor descending y gives this order.
    shape = (200, 1300)
    prob_map = np.maximum(_blob(shape, 150, 90, 0.95), _blob(shape, 1150, 100, 0.7))
    # Five box passes move each peak 2 px right and down (OpenCV's even-box anchor).
    assert attention_centres(prob_map) == [(152, 92), (1152, 102)]


def test_a_map_that_reaches_one_keeps_its_peak() -> None:
    # uint8(255 * 1.0) = 255; a factor of 256 would wrap the plateau to 0.
    prob_map = np.zeros((300, 300))
    prob_map[100:160, 120:180] = 1.0
    # The block's centre (149.5, 129.5), moved about 2 px right and down by the box passes.
    ((x, y),) = attention_centres(prob_map)
    assert abs(x - 151.5) <= 1 and abs(y - 131.5) <= 1


def test_a_peak_that_smooths_to_one_grey_level_is_a_centre() -> None:
    # A 5 x 5 block of ones smooths to a plateau of grey level 1 (> 0): still a centre, and
    # the map is 1 at its centroid; 4 x 4 smooths to 0 and leaves none.
    prob_map = np.zeros((300, 300))
    prob_map[150:155, 150:155] = 1.0
    assert attention_centres(prob_map) == [(154, 154)]
    prob_map[:] = 0.0
    prob_map[150:154, 150:154] = 1.0
    assert attention_centres(prob_map) == []


def test_rsu_is_one_when_nothing_lies_outside_the_mask() -> None:
    polygon = np.array([[20, 30], [80, 30], [80, 90], [20, 90]], float)
    prob_map = region_mask((120, 160), [polygon]).astype(np.float64)
    assert selo_metrics(prob_map, [polygon])["rsu"] == 1.0
    # With a little outside, the formula: 1 - exp(-0.707 * inside / outside * (HW - M) / M).
    prob_map[0, 0] = 0.5
    inside, area = float(prob_map.sum() - 0.5), float(region_mask((120, 160), [polygon]).sum())
    expected = 1 - math.exp(-0.707 * inside / (0.5 + 1e-7) * (120 * 160 - area) / area)
    assert selo_metrics(prob_map, [polygon])["rsu"] == pytest.approx(expected, rel=1e-12)


def test_the_smallest_region_radius_is_accepted() -> None:
    # Vertex mean (10.33, 10.33) -> (10, 10); distances 0, 1, 1 -> int(1.5 x 2/3) = 1 pixel.
    triangle = np.array([[10, 10], [11, 10], [10, 11]], float)
    metrics = selo_metrics(np.full((40, 40), 0.2), [triangle])
    assert metrics["ras"] == 1.0 and metrics["rda"] == 0.0
    # Mean distance 0 truncates to a radius of 0: refused.
    with pytest.raises(ValueError, match="polygon 0 is degenerate: its radius truncates to 0"):
        selo_metrics(np.full((40, 40), 0.2), [np.array([[5, 5], [5, 5], [5, 5]], float)])


def test_region_mask_is_uint8() -> None:
    mask = region_mask((20, 30), [np.array([[2, 3], [9, 3], [9, 8]], float)])
    assert mask.dtype == np.uint8 and mask.max() == 1


def test_messages_say_what_to_fix() -> None:
    with pytest.raises(
        ValueError, match=r"^prob_map values must lie in \[0, 1\], but it holds NaN or infinite"
    ):
        selo_metrics(np.full((10, 10), np.nan), [np.array([[1, 1], [5, 1], [5, 5]], float)])
    with pytest.raises(ValueError, match=r"min-max normalise it \(or divide a uint8 map by 255\)"):
        selo_metrics(np.full((10, 10), 3.0), [np.array([[1, 1], [5, 1], [5, 5]], float)])
    with pytest.raises(ValueError, match="^a SeLo sample needs at least one ground-truth polygon"):
        check_polygons([])
    with pytest.raises(ValueError, match="polygons need >= 3|3 \\(x, y\\)|vertices"):
        check_polygons([np.zeros((3, 3))])  # three columns are not (x, y) pairs
    # A wide map: the message gives width x height.
    with pytest.raises(
        ValueError,
        match=r"^the polygons cover no pixel of the 60x20 map: are they in pixel \(x, y\) of "
        r"this image, not map coordinates or \(row, col\)\?$",
    ):
        selo_metrics(np.zeros((20, 60)), [np.array([[100, 100], [120, 100], [120, 130]], float)])
