"""The SeLo ground-truth mask and metrics against the protocol, overlaps included.

The reference implementation fills ALL of a sample's polygons with ONE ``cv2.fillPoly`` call.
OpenCV then (1) draws every polygon's outline as 8-connected lines and (2) fills, scan line by
scan line, the spans between successive crossings of ALL the edges taken together, by parity
(even-odd rule, not nonzero winding). A pixel inside an even number of polygons is therefore left
empty unless an outline passes over it. Two overlapping squares lose the inside of their common
part; the same polygon given twice leaves only its outline. The tests below check this by hand,
check the rule on random polygons ("XOR of the polygons, plus every outline"), and compare
``selo_metrics`` with an implementation of the metrics written here from the protocol text
(REFERENCE.md section 6) on random maps to 1e-12.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.ndimage import maximum_filter
from skimage.measure import label

from dgtrs_geo.evaluation.selo import (
    attention_centres,
    region_centre_radius,
    region_mask,
    selo_metrics,
)

# Two 121 x 121 px squares (fillPoly includes both boundary rows and columns) overlapping in a
# 61 x 61 px block, rows and columns 100..160.
SQUARE_A = np.array([[40, 40], [160, 40], [160, 160], [40, 160]], dtype=float)
SQUARE_B = SQUARE_A + 60
SHAPE = (300, 300)
UNION_AREA = 2 * 121 * 121 - 61 * 61  # 25561
# Inside the overlap, only the outlines of row 100 (B's top), row 160 (A's bottom), column 100
# (B's left) and column 160 (A's right) are drawn: its 59 x 59 interior stays empty.
REFERENCE_AREA = UNION_AREA - 59 * 59  # 22080


def test_two_overlapping_squares_by_hand() -> None:
    mask = region_mask(SHAPE, [SQUARE_A, SQUARE_B])
    assert mask.sum() == REFERENCE_AREA
    assert not mask[101:160, 101:160].any()  # covered twice: even parity, no outline
    assert mask[100, 100:161].all() and mask[160, 100:161].all()  # outlines of B's top, A's bottom
    assert mask[100:161, 100].all() and mask[100:161, 160].all()  # outlines of B's left, A's right
    assert mask[40:100, 40:161].all() and mask[161:221, 100:221].all()  # covered once: filled
    assert region_mask(SHAPE, [SQUARE_A, SQUARE_B], rule="union").sum() == UNION_AREA
    # Nonzero winding would fill the overlap: OpenCV's fill is even-odd.
    assert mask[130, 130] == 0


def test_repeated_polygons_by_parity() -> None:
    # Twice the same square: covered twice everywhere, only its outline (4 x 121 - 4 px) is left.
    assert region_mask(SHAPE, [SQUARE_A, SQUARE_A]).sum() == 4 * 121 - 4
    # Three times: odd parity, the square is filled again.
    assert region_mask(SHAPE, [SQUARE_A] * 3).sum() == 121 * 121


def test_rsu_on_the_overlap_by_hand() -> None:
    # P = 1 on the overlap's 59 x 59 interior, 0.2 elsewhere.
    prob_map = np.full(SHAPE, 0.2)
    prob_map[101:160, 101:160] = 1.0
    total = 59 * 59 * 1.0 + (300 * 300 - 59 * 59) * 0.2
    hw = 300 * 300

    def rsu(inside: float, area: int) -> float:
        return 1 - math.exp(-0.707 * inside / (total - inside + 1e-7) * (hw - area) / area)

    # Reference mask: the interior is out, every pixel of the mask scores 0.2.
    expected_reference = rsu(0.2 * REFERENCE_AREA, REFERENCE_AREA)
    # Union: the interior is in.
    expected_union = rsu(59 * 59 + 0.2 * (UNION_AREA - 59 * 59), UNION_AREA)
    polygons = [SQUARE_A, SQUARE_B]
    assert selo_metrics(prob_map, polygons)["rsu"] == pytest.approx(expected_reference, abs=1e-12)
    union = selo_metrics(prob_map, polygons, mask_rule="union")["rsu"]
    assert union == pytest.approx(expected_union, abs=1e-12)
    assert expected_union - expected_reference > 0.05


def _star_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """A random polygon around ``centre``: convex with few vertices, often concave with many."""
    n = int(rng.integers(3, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.35, 1.0, n)
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)


def _random_polygons(rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """Overlapping, touching, concave and partly-outside polygons (a region's centre stays in)."""
    polygons = []
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform([10, 10], [width - 10, height - 10])
        polygons.append(_star_polygon(rng, centre, rng.uniform(25, 0.4 * min(height, width))))
    if rng.random() < 0.5:
        # A square touching another along a shared edge.
        x, y, side = rng.uniform(40, width / 2), rng.uniform(40, height / 2), rng.uniform(30, 60)
        polygons.append(np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]]))
        polygons.append(polygons[-1] + [side, 0])
    if rng.random() < 0.5:
        # Running past the left and top edges (negative coordinates).
        polygons.append(
            rng.uniform(-20, 60, (5, 2)) + [[0, 0], [60, 0], [80, 60], [20, 80], [0, 50]]
        )
    return polygons


def _random_map(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blobs of random strength and width plus noise, min-max normalised, as 8-bit levels."""
    rows, cols = np.mgrid[:height, :width]
    out = rng.uniform(0, 0.3, (height, width))
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        sigma = rng.uniform(10, 60)
        out += rng.uniform(0.3, 1.5) * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    out = (out - out.min()) / (out.max() - out.min())
    return np.floor(255 * out) / 255  # the reference reads its map from an 8-bit image


def _twin_peak_map(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two identical blobs on a flat background, far apart and from the edges (after smoothing
    both peaks are exact ties, so both are attention centres), and a box around both."""
    rows, cols = np.mgrid[:height, :width]
    sigma = rng.uniform(10, 25)
    y = int(rng.integers(130, height - 130))
    x0 = int(rng.integers(130, width - 400))
    x1 = int(rng.integers(x0 + 260, width - 130))
    out = sum(np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2)) for x in (x0, x1))
    box = np.array([[x0 - 40, y - 50], [x1 + 40, y - 50], [x1 + 40, y + 50], [x0 - 40, y + 50]])
    return np.floor(255 * (0.1 + 0.9 * out)) / 255, box.astype(float)


def _protocol_metrics(prob_map: np.ndarray, polygons: list[np.ndarray]) -> dict[str, float]:
    """REFERENCE.md section 6, step by step, independent of dgtrs_geo."""
    height, width = prob_map.shape
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.asarray(p).astype(np.int32) for p in polygons], 1)
    inside = np.sum(prob_map * mask)
    rsu = 1 - math.exp(
        -0.707
        * (inside / (np.sum(prob_map) - inside + 1e-7))
        * ((height * width - np.sum(mask)) / np.sum(mask))
    )
    gray = (255 * prob_map).astype(np.uint8)
    for _ in range(5):
        gray = cv2.boxFilter(gray, -1, (50, 50))
    labels = label((gray == maximum_filter(gray, size=1000)) & (gray > 0), connectivity=2)
    centres = []
    for value in range(1, labels.max() + 1):
        ys, xs = np.nonzero(labels == value)
        centres.append((int(xs.mean()), int(ys.mean())))
    centres = [c for c in centres if prob_map[c[1], c[0]] >= 0.5]
    offsets, rda_terms = [], []
    for polygon in polygons:
        cx, cy = int(np.mean(polygon[:, 0])), int(np.mean(polygon[:, 1]))
        r = int(1.5 * np.mean([math.dist((cx, cy), v) for v in polygon]))
        near = [c for c in centres if math.dist(c, (cx, cy)) <= r]
        offsets.append((np.mean([math.dist(c, (cx, cy)) for c in near]) if near else r) / r)
        if len(near) <= 1:
            rda_terms.append(len(near))
        else:
            mx, my = np.mean([c[0] for c in near]), np.mean([c[1] for c in near])
            spread = np.mean([math.dist(c, (mx, my)) for c in near]) / r
            rda_terms.append(0.5 * (1 - spread) + math.exp(-0.5 * (len(near) + 2)))
    if not centres:
        offsets = [1.0]
    ras = (math.exp(3 * np.mean(offsets)) - 1) / (math.exp(3) - 1)
    rda = float(np.mean(rda_terms))
    return {"rsu": rsu, "ras": ras, "rda": rda, "rmi": 0.4 * rsu + 0.35 * (1 - ras) + 0.25 * rda}


def test_one_fillpoly_call_is_xor_plus_outlines() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        height, width = int(rng.integers(120, 260)), int(rng.integers(120, 260))
        polygons = _random_polygons(rng, height, width)
        contours = [p.astype(np.int32) for p in polygons]
        parity = np.zeros((height, width), np.uint8)
        for contour in contours:
            single = np.zeros_like(parity)
            cv2.fillPoly(single, [contour], 1)
            parity ^= single
        outlines = np.zeros_like(parity)
        cv2.polylines(outlines, contours, isClosed=True, color=1)
        np.testing.assert_array_equal(region_mask((height, width), polygons), parity | outlines)


def test_metrics_match_the_protocol_on_random_maps() -> None:
    rng = np.random.default_rng(2024)
    differing_masks = rsu_changed = with_centres = two_in_a_region = 0
    for case in range(36):
        if case % 3 == 2:
            height, width = int(rng.integers(280, 360)), int(rng.integers(560, 700))
            prob_map, box = _twin_peak_map(rng, height, width)
            polygons = [box, *_random_polygons(rng, height, width)]
        else:
            height, width = int(rng.integers(200, 360)), int(rng.integers(200, 420))
            prob_map = _random_map(rng, height, width)
            polygons = _random_polygons(rng, height, width)
        if not region_mask((height, width), polygons).any():
            continue
        got = selo_metrics(prob_map, polygons)
        expected = _protocol_metrics(prob_map, polygons)
        for name in ("rsu", "ras", "rda", "rmi"):
            assert abs(got[name] - expected[name]) <= 1e-12, (name, got, expected)
        union = region_mask((height, width), polygons, rule="union")
        if (union != region_mask((height, width), polygons)).any():
            differing_masks += 1
            union_rsu = selo_metrics(prob_map, polygons, mask_rule="union")["rsu"]
            rsu_changed += abs(union_rsu - got["rsu"]) > 1e-9
        with_centres += got["ras"] < 1.0
        centres = np.array(attention_centres(prob_map)).reshape(-1, 2)
        (cx, cy), radius = region_centre_radius(polygons[0])
        two_in_a_region += np.sum(np.hypot(*(centres - [cx, cy]).T) <= radius) >= 2
    # The cases exercise what they claim: overlaps that change Rsu, centres inside regions,
    # and maps with several centres (Rda's spread term).
    assert differing_masks >= 5 and rsu_changed >= 5
    assert with_centres >= 10 and two_in_a_region >= 8
