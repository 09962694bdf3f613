"""Semantic-localization (SeLo) metrics: Rsu, Ras, Rda and Rmi for one sample.

Every step follows the AIR-SLT reference protocol (docs/protocols.md sec. 8), including the details
that decide exactness: ONE OpenCV ``fillPoly`` call over all of a sample's polygons for the
ground-truth mask (see :func:`region_mask`: where polygons overlap this is not their union),
OpenCV's normalised
``boxFilter`` on ``uint8`` (5 passes, 50x50, reflect-101 border), SciPy's 1000x1000
``maximum_filter``, scikit-image's 8-connected labels, ``int()`` truncation of region centres,
radii and attention centroids, and inclusive radius tests. All parameters are in pixels, so maps
must be evaluated at the resolution of the annotations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import maximum_filter
from skimage.measure import label, regionprops

_BOX_SIZE = 50
_BOX_PASSES = 5
_PEAK_SIZE = 1000
_MIN_CENTRE_PROBABILITY = 0.5
_RAS_SCALE = 3.0
_RSU_SCALE = 0.707
# float32 min-max normalisation can overshoot [0, 1] by a rounding step (1.0000001): such maps
# are accepted and clipped; reference maps (uint8 / 255) are never touched.
_ROUNDING = 1e-6
RMI_WEIGHTS = {"rsu": 0.4, "ras": 0.35, "rda": 0.25}
"""Weights of Rmi = 0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda."""
MASK_RULES = ("reference", "union")
"""Ground-truth mask rules: the reference's single ``fillPoly`` call, or the polygons' union."""


def check_probability_map(prob_map: np.ndarray) -> np.ndarray:
    """Return ``prob_map`` as a float64 array after checking it is a 2-D map in [0, 1].

    Args:
        prob_map: the probability map, rows = y, columns = x.

    Returns:
        The map as ``float64``, clipped to [0, 1] (values within 1e-6 outside it are float
        rounding of a min-max normalisation).

    Raises:
        ValueError: if the map is not 2-D, is empty, or holds values more than 1e-6 outside
            [0, 1] or NaN.

    """
    prob_map = np.asarray(prob_map)
    if prob_map.ndim != 2 or prob_map.size == 0:
        raise ValueError(
            f"prob_map must be a non-empty 2-D array (rows = y, cols = x), got shape "
            f"{prob_map.shape}; squeeze channel axes and pass one map per query"
        )
    prob_map = prob_map.astype(np.float64)
    if not np.isfinite(prob_map).all():
        raise ValueError("prob_map values must lie in [0, 1], but it holds NaN or infinite values")
    if prob_map.min() < -_ROUNDING or prob_map.max() > 1.0 + _ROUNDING:
        raise ValueError(
            f"prob_map values must lie in [0, 1], got [{prob_map.min()}, {prob_map.max()}]; "
            "min-max normalise it (or divide a uint8 map by 255)"
        )
    return np.clip(prob_map, 0.0, 1.0)


def check_polygons(polygons: Sequence[np.ndarray | Sequence[Sequence[float]]]) -> list[np.ndarray]:
    """Return the polygons as ``(N, 2)`` float arrays of pixel (x, y) after checking them.

    Args:
        polygons: one or more polygons, each a sequence of at least 3 pixel (x, y) vertices.

    Returns:
        The polygons as ``float64`` arrays of shape ``(N, 2)``.

    Raises:
        ValueError: if there is no polygon or one is not ``(N >= 3, 2)``.

    """
    if len(polygons) == 0:
        raise ValueError("a SeLo sample needs at least one ground-truth polygon")
    checked = []
    for index, polygon in enumerate(polygons):
        array = np.asarray(polygon, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 3:
            raise ValueError(
                f"polygon {index} must be an (N, 2) array of pixel (x, y) vertices with N >= 3, "
                f"got shape {array.shape}"
            )
        checked.append(array)
    return checked


def region_mask(
    shape: tuple[int, int], polygons: Sequence[np.ndarray], rule: str = "reference"
) -> np.ndarray:
    """Ground-truth mask (uint8, 0/1) of a sample's polygons.

    ``rule="reference"`` is the reference implementation's mask: ONE ``cv2.fillPoly`` call over
    all polygons (vertices cast to int32). OpenCV draws each polygon's outline (8-connected
    lines) and fills the spans between the crossings of ALL edges on each scan line by parity
    (even-odd), so pixels covered by an even number of polygons are left empty unless an outline
    crosses them: two overlapping squares leave their common interior out. ``rule="union"`` fills
    each polygon with its own call, which is the union of the regions (not comparable with
    published numbers where polygons overlap; identical where they do not).

    Args:
        shape: ``(height, width)`` of the map.
        polygons: ``(N, 2)`` arrays of pixel (x, y) vertices; truncated to int32 like the reference.
        rule: ``"reference"`` or ``"union"``.

    Returns:
        A ``uint8`` array of ``shape`` with 1 on the mask.

    Raises:
        ValueError: if ``rule`` is unknown.

    """
    contours = [np.asarray(polygon).astype(np.int32) for polygon in polygons]
    mask = np.zeros(shape, dtype=np.uint8)
    match rule:
        case "reference":
            cv2.fillPoly(mask, contours, (1,))
        case "union":
            for contour in contours:
                cv2.fillPoly(mask, [contour], (1,))
        case _:
            raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {rule!r}")
    return mask


def region_centre_radius(polygon: np.ndarray) -> tuple[tuple[int, int], int]:
    """Centre (truncated vertex mean) and radius (``int(1.5 x`` mean vertex distance)) of a region.

    Args:
        polygon: ``(N, 2)`` pixel (x, y) vertices.

    Returns:
        ``((cx, cy), r)`` in pixels.

    """
    centre = polygon.mean(axis=0)
    cx, cy = int(centre[0]), int(centre[1])
    distances = np.hypot(polygon[:, 0] - cx, polygon[:, 1] - cy)
    return (cx, cy), int(1.5 * distances.mean())


def attention_centres(prob_map: np.ndarray) -> list[tuple[int, int]]:
    """Peaks of the smoothed map: the reference's attention centres, strongest first.

    Args:
        prob_map: 2-D map in [0, 1].

    Returns:
        Integer pixel ``(x, y)`` centroids of the plateaus of local maxima, sorted by the map's
        value there (descending), keeping those where it is at least 0.5. OpenCV anchors an even
        50-pixel box one pixel before its middle, so each pass moves a peak half a pixel right
        and down: an isolated peak at ``(x, y)`` comes back near ``(x + 2, y + 2)``, as in the
        reference.

    """
    prob_map = check_probability_map(prob_map)
    smoothed: np.ndarray = (prob_map * 255).astype(np.uint8)
    for _ in range(_BOX_PASSES):
        smoothed = cv2.boxFilter(smoothed, -1, (_BOX_SIZE, _BOX_SIZE))
    peaks = (smoothed == maximum_filter(smoothed, size=_PEAK_SIZE)) & (smoothed > 0)
    centres = []
    for region in regionprops(label(peaks, connectivity=2)):
        row, col = region.centroid
        centres.append((int(col), int(row)))
    centres.sort(key=lambda xy: prob_map[xy[1], xy[0]], reverse=True)
    return [xy for xy in centres if prob_map[xy[1], xy[0]] >= _MIN_CENTRE_PROBABILITY]


def _rsu(prob_map: np.ndarray, mask: np.ndarray) -> float:
    inside = float((prob_map * mask).sum())
    outside = float(prob_map.sum()) - inside
    area = float(mask.sum())
    ratio = inside / (outside + 1e-7) * (mask.size - area) / area
    return 1.0 - math.exp(-_RSU_SCALE * ratio)


def _ras_rda(
    centres: Sequence[tuple[int, int]], regions: Sequence[tuple[tuple[int, int], int]]
) -> tuple[float, float]:
    points = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    relative_offsets = []
    rda_terms = []
    for (cx, cy), radius in regions:
        distances = np.hypot(points[:, 0] - cx, points[:, 1] - cy)
        inside = distances <= radius
        count = int(inside.sum())
        relative_offsets.append((distances[inside].mean() if count else radius) / radius)
        if count <= 1:
            rda_terms.append(float(count))
        else:
            members = points[inside]
            spread = np.hypot(*(members - members.mean(axis=0)).T).mean() / radius
            rda_terms.append(0.5 * (1.0 - spread) + math.exp(-0.5 * (count + 2)))
    if len(points) == 0:
        # The reference's special case: no centre at all scores one full radius on region 0 only.
        relative_offsets = [1.0]
    ras = (math.exp(_RAS_SCALE * float(np.mean(relative_offsets))) - 1.0) / (
        math.exp(_RAS_SCALE) - 1.0
    )
    return ras, float(np.mean(rda_terms))


def rmi(rsu: float, ras: float, rda: float) -> float:
    """Combine the three SeLo metrics: ``0.4 Rsu + 0.35 (1 - Ras) + 0.25 Rda``."""
    return RMI_WEIGHTS["rsu"] * rsu + RMI_WEIGHTS["ras"] * (1.0 - ras) + RMI_WEIGHTS["rda"] * rda


def selo_metrics(
    prob_map: np.ndarray,
    polygons: Sequence[np.ndarray | Sequence[Sequence[float]]],
    mask_rule: str = "reference",
) -> dict[str, float]:
    """SeLo metrics of one sample, exactly as the AIR-SLT reference protocol defines them.

    Args:
        prob_map: 2-D float map in [0, 1], rows = y, at the annotation's pixel resolution.
        polygons: ground-truth regions, each an ``(N >= 3, 2)`` array of pixel (x, y) vertices
            as in ``anno.json``.
        mask_rule: ``"reference"`` (default: the reference's single ``fillPoly`` call, so
            numbers compare with published ones bit for bit) or ``"union"`` (the union of the
            polygons; differs only where polygons overlap). See :func:`region_mask`.

    Returns:
        ``{"rsu", "ras", "rda", "rmi"}``: Rsu, Rda and Rmi are higher-better, Ras lower-better.

    Raises:
        ValueError: if the map is not 2-D in [0, 1], a polygon has fewer than 3 vertices, the
            polygons cover no pixel of the map, a region's radius truncates to 0, or
            ``mask_rule`` is unknown.

    """
    prob_map = check_probability_map(prob_map)
    polygons = check_polygons(polygons)
    mask = region_mask((prob_map.shape[0], prob_map.shape[1]), polygons, mask_rule)
    if not mask.any():
        raise ValueError(
            f"the polygons cover no pixel of the {prob_map.shape[1]}x{prob_map.shape[0]} map: "
            "are they in pixel (x, y) of this image, not map coordinates or (row, col)?"
        )
    regions = [region_centre_radius(polygon) for polygon in polygons]
    for index, (_, radius) in enumerate(regions):
        if radius <= 0:
            raise ValueError(f"polygon {index} is degenerate: its radius truncates to 0 pixels")
    rsu = _rsu(prob_map, mask)
    ras, rda = _ras_rda(attention_centres(prob_map), regions)
    return {"rsu": rsu, "ras": ras, "rda": rda, "rmi": rmi(rsu, ras, rda)}
