import math

import numpy as np
import pytest

from dgtrs_geo.evaluation.selo import _ras_rda as ras_rda
from dgtrs_geo.evaluation.selo import (
    attention_centres,
    region_centre_radius,
    region_mask,
    rmi,
    selo_metrics,
)

SQUARE = np.array([[40, 40], [160, 40], [160, 160], [40, 160]], dtype=float)


def _blob_map(
    shape: tuple[int, int], peaks: list[tuple[int, int]], sigma: float = 12.0
) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    for x, y in peaks:
        out = np.maximum(out, np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)))
    return out


def test_region_centre_and_radius_hand_computed() -> None:
    # Mean vertex distance from (100, 100) is 60 * sqrt(2) = 84.85; 1.5 x = 127.28 -> 127.
    assert region_centre_radius(SQUARE) == ((100, 100), 127)
    # Vertex mean (10/3, 10/3) truncates to (3, 3).
    triangle = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    (cx, cy), radius = region_centre_radius(triangle)
    assert (cx, cy) == (3, 3)
    expected = int(1.5 * (math.hypot(3, 3) + math.hypot(7, 3) + math.hypot(3, 7)) / 3)
    assert radius == expected


def test_union_mask_rule() -> None:
    overlapping = [SQUARE, SQUARE + 60]
    mask = region_mask((300, 300), overlapping, rule="union")
    # fillPoly includes both boundary rows/columns: 121 x 121 each, 61 x 61 shared.
    assert mask.sum() == 2 * 121 * 121 - 61 * 61
    assert mask[130, 130] == 1  # in the overlap: a union, not a parity fill
    with pytest.raises(ValueError, match="mask_rule"):
        region_mask((300, 300), overlapping, rule="nonzero")


def test_flat_map_rsu() -> None:
    metrics = selo_metrics(np.full((200, 300), 0.3), [SQUARE])
    assert metrics["rsu"] == pytest.approx(1 - math.exp(-0.707), abs=1e-6)
    assert metrics["rsu"] == pytest.approx(0.506879, abs=1e-6)


def test_no_attention_centre_gives_ras_one_and_rda_zero() -> None:
    # A flat map below 0.5 has one plateau but it is dropped by the >= 0.5 filter.
    prob_map = np.full((200, 300), 0.3)
    assert attention_centres(prob_map) == []
    metrics = selo_metrics(prob_map, [SQUARE, SQUARE + [120, 20]])
    assert metrics["ras"] == pytest.approx(1.0)
    assert metrics["rda"] == 0.0
    assert metrics["rmi"] == pytest.approx(0.4 * (1 - math.exp(-0.707)), abs=1e-6)


def test_zero_map() -> None:
    metrics = selo_metrics(np.zeros((100, 100)), [SQUARE / 2])
    assert metrics == pytest.approx({"rsu": 0.0, "ras": 1.0, "rda": 0.0, "rmi": 0.0})


def test_flat_high_map_has_its_centre_at_the_plateau_centroid() -> None:
    # The whole map is one plateau: centroid (149.5, 99.5) truncates to (149, 99).
    assert attention_centres(np.full((200, 300), 0.8)) == [(149, 99)]


def test_one_centre_inside_region() -> None:
    # OpenCV's even 50 px box is anchored at 25: 5 passes move the peak by 2.5 px right and down.
    prob_map = _blob_map((240, 320), [(98, 98)])
    assert attention_centres(prob_map) == [(100, 100)]
    metrics = selo_metrics(prob_map, [SQUARE])
    assert metrics["rda"] == 1.0
    assert metrics["ras"] == pytest.approx(0.0)  # centre exactly on the region centre
    assert metrics["rmi"] == pytest.approx(0.4 * metrics["rsu"] + 0.35 + 0.25)


def test_centre_offset_hand_computed() -> None:
    prob_map = _blob_map((240, 320), [(128, 138)])
    assert attention_centres(prob_map) == [(130, 140)]
    metrics = selo_metrics(prob_map, [SQUARE])
    offset = math.hypot(30, 40) / 127
    assert metrics["ras"] == pytest.approx((math.exp(3 * offset) - 1) / (math.exp(3) - 1))
    assert metrics["rda"] == 1.0


def test_two_equal_peaks_are_both_centres() -> None:
    prob_map = _blob_map((300, 400), [(98, 148), (298, 148)])
    assert sorted(attention_centres(prob_map)) == [(100, 150), (300, 150)]
    # Region centre (200, 150); mean vertex distance hypot(150, 100) = 180.28 -> r = 270.
    region = np.array([[50, 50], [350, 50], [350, 250], [50, 250]], dtype=float)
    metrics = selo_metrics(prob_map, [region])
    # Both centres lie 100 px from the region centre, which is also their mean.
    rda = 0.5 * (1 - 100 / 270) + math.exp(-0.5 * (2 + 2))
    ras = (math.exp(3 * 100 / 270) - 1) / (math.exp(3) - 1)
    assert metrics["rda"] == pytest.approx(rda)
    assert metrics["ras"] == pytest.approx(ras)
    assert metrics["rmi"] == pytest.approx(0.4 * metrics["rsu"] + 0.35 * (1 - ras) + 0.25 * rda)


def test_peaks_closer_than_the_smoothing_merge() -> None:
    # 60 px apart, the smoothed map has one peak between them, where the map itself is low.
    assert attention_centres(_blob_map((240, 320), [(70, 100), (130, 100)])) == []


def test_weak_peak_is_dropped() -> None:
    prob_map = 0.4 * _blob_map((240, 320), [(100, 100)])
    assert attention_centres(prob_map) == []


def test_centre_threshold_is_inclusive() -> None:
    assert attention_centres(np.full((60, 80), 0.5)) == [(39, 29)]
    assert attention_centres(np.full((60, 80), 0.499)) == []


def test_ras_rda_hand_computed_cases() -> None:
    regions = [((100, 100), 50), ((300, 100), 20)]
    # Region 0 holds (110, 100) and (100, 130): offsets 10 and 30, mean 20 -> 0.4 of the radius;
    # their mean (105, 115) is at 15.81 px from each. Region 1 holds nothing: offset = radius.
    ras, rda = ras_rda([(110, 100), (100, 130), (500, 500)], regions)
    assert ras == pytest.approx((math.exp(3 * (0.4 + 1.0) / 2) - 1) / (math.exp(3) - 1))
    spread = math.hypot(5, 15) / 50
    assert rda == pytest.approx((0.5 * (1 - spread) + math.exp(-2.0) + 0.0) / 2)
    # The radius test is inclusive.
    assert ras_rda([(150, 100)], [((100, 100), 50)]) == pytest.approx((1.0, 1.0))
    assert ras_rda([(151, 100)], [((100, 100), 50)]) == pytest.approx((1.0, 0.0))
    # No centre at all: Ras = 1 whatever the regions.
    assert ras_rda([], regions) == pytest.approx((1.0, 0.0))


def test_rmi_weights() -> None:
    assert rmi(1.0, 0.0, 1.0) == pytest.approx(1.0)
    assert rmi(1.0, 1.0, 0.0) == pytest.approx(0.4)
    assert rmi(0.0, 0.0, 0.0) == pytest.approx(0.35)
    assert rmi(0.0, 1.0, 1.0) == pytest.approx(0.25)


def test_float32_rounding_above_one_is_accepted_as_one() -> None:
    # float32 min-max maps reach 1.0000001: such a map scores exactly as the same map at 1.
    prob_map = np.full((200, 300), 0.3)
    prob_map[80:120, 80:120] = 1.0
    rounded = prob_map.astype(np.float32)
    rounded[100, 100] = np.nextafter(np.float32(1), np.float32(2))
    assert rounded.max() > 1.0
    assert selo_metrics(rounded, [SQUARE]) == selo_metrics(prob_map.astype(np.float32), [SQUARE])


@pytest.mark.parametrize(
    ("prob_map", "match"),
    [
        (np.zeros((2, 10, 10)), "2-D"),
        (np.zeros((0, 10)), "2-D"),
        (np.full((10, 10), 1.5), r"\[0, 1\]"),
        (np.full((10, 10), 1.00001), r"\[0, 1\]"),
        (np.full((10, 10), -0.1), r"\[0, 1\]"),
        (np.full((10, 10), np.nan), "NaN"),
    ],
)
def test_bad_prob_map(prob_map: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        selo_metrics(prob_map, [SQUARE])


def test_bad_polygons() -> None:
    prob_map = np.zeros((200, 200))
    with pytest.raises(ValueError, match="N >= 3"):
        selo_metrics(prob_map, [[[0, 0], [10, 10]]])
    with pytest.raises(ValueError, match="at least one"):
        selo_metrics(prob_map, [])
    with pytest.raises(ValueError, match="cover no pixel"):
        selo_metrics(prob_map, [SQUARE + 1000])
    with pytest.raises(ValueError, match="degenerate"):
        selo_metrics(prob_map, [[[5, 5], [5, 5], [5, 5]]])
