"""Probability maps of images held in memory: the published recipe, exactly, and the fast mode.

The reference recipe (docs/protocols.md section 7) plans windows of 256, 512 and 768 px
(two grids each, clamped, deduplicated), resizes each crop to 256 x 256 (bicubic) and then applies
the model's own preprocessing, scores it by cosine similarity with the query, averages the scores
of the windows covering each pixel, min-max normalises, converts to uint8 (truncating), and median
blurs with a 251 px kernel; the authors then save and re-read the map as JPEG (optional here).
The map it returns is ``gray / 255``, as the SeLo metrics read it.

The fast mode shares the plan and the averaging but resizes windows on the device in batches and
smooths with a Gaussian, which keeps NaN (nodata) cells apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..protocols import WindowModel
from .encode import encode_texts, encode_windows
from .heatmap import accumulate, auto_cell, grid_windows, normalise, smooth
from .raster import ArraySource
from .windows import REFERENCE_SCALES, plan_windows

__all__ = ["fast_probability_map", "reference_finish", "reference_probability_map"]

#: Median-blur kernel of the published recipe, in pixels.
REFERENCE_BLUR = 251


def reference_finish(
    mean_scores: np.ndarray[Any, Any], jpeg_roundtrip: bool = False
) -> np.ndarray[Any, Any]:
    """Turn per-pixel mean scores into the published recipe's probability map.

    Min-max to [0, 1], ``uint8(255 * p)`` (truncation), OpenCV median blur with kernel 251,
    optionally a JPEG encode/decode (OpenCV's default quality 95), then ``/ 255``. NaN cells (no
    window, nodata) take part as 0 and are NaN again in the result.

    Args:
        mean_scores: float ``[H, W]``.
        jpeg_roundtrip: reproduce the authors' JPEG save and re-read.

    Returns:
        float32 ``[H, W]`` in [0, 1].

    """
    finite = np.isfinite(mean_scores)
    p = np.nan_to_num(normalise(mean_scores, "minmax"), nan=0.0)
    gray = cv2.medianBlur((255.0 * p).astype(np.uint8), REFERENCE_BLUR)
    if jpeg_roundtrip:
        ok, encoded = cv2.imencode(".jpg", gray)
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode the probability map")
        gray = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    out = gray.astype(np.float32) / 255.0
    out[~finite] = np.nan
    return out


def _mean_scores(
    image: np.ndarray[Any, Any],
    query: str,
    model: WindowModel,
    scales: Sequence[int],
    reference: bool,
    batch_size: int | None,
    cell: int = 1,
) -> np.ndarray[Any, Any]:
    if not query or not query.strip():
        raise ValueError("the query is empty: describe what to find, e.g. 'a tennis court'")
    source = ArraySource(image)
    plan = plan_windows(source.width, source.height, scales)
    kept, embeddings = encode_windows(
        model, source, plan.windows, reference=reference, batch_size=batch_size, min_valid=0.0
    )
    scores = embeddings @ encode_texts(model, [query])[0]
    boxes, shape = grid_windows(plan.windows[kept], plan.region, cell=cell)
    return accumulate(boxes, scores, shape)


def reference_probability_map(
    image: np.ndarray[Any, Any],
    query: str,
    model: WindowModel,
    scales: Sequence[int] = REFERENCE_SCALES,
    jpeg_roundtrip: bool = False,
    batch_size: int | None = None,
) -> np.ndarray[Any, Any]:
    """Return the published recipe's SeLo probability map of an image, in pixel coordinates.

    Batching the crops changes nothing but speed: each crop is preprocessed exactly as the recipe
    does and the model sees the same tensors.

    Args:
        image: uint8 ``[H, W, 3]`` RGB image (e.g. an AIR-SLT JPEG).
        query: the text to localize.
        model: a loaded model (:func:`dgtrs_geo.load_model`).
        scales: window sizes in pixels.
        jpeg_roundtrip: also reproduce the authors' JPEG save and re-read of the map.
        batch_size: crops per forward (``None``: chosen for the device).

    Returns:
        float32 ``[H, W]`` in [0, 1].

    """
    mean = _mean_scores(image, query, model, scales, reference=True, batch_size=batch_size)
    return reference_finish(mean, jpeg_roundtrip=jpeg_roundtrip)


def fast_probability_map(
    image: np.ndarray[Any, Any],
    query: str,
    model: WindowModel,
    scales: Sequence[int] = REFERENCE_SCALES,
    sigma: float | None = None,
    batch_size: int | None = None,
) -> np.ndarray[Any, Any]:
    """Return the fast mode's probability map of an image (the default of :func:`localize`).

    Args:
        image: uint8 ``[H, W, 3]`` RGB image.
        query: the text to localize.
        model: a loaded model.
        scales: window sizes in pixels.
        sigma: Gaussian smoothing in pixels (``None``: a quarter of the smallest window, 0: off).
        batch_size: windows per forward (``None``: chosen for the device).

    Returns:
        float32 ``[H, W]`` in [0, 1], min-max normalised after smoothing.

    """
    height, width = image.shape[:2]
    cell = auto_cell(scales, width, height)
    mean = _mean_scores(image, query, model, scales, False, batch_size, cell=cell)
    sigma = min(scales) / 4 if sigma is None else sigma
    coarse = normalise(smooth(mean, sigma / cell), "minmax")
    if cell == 1:
        return coarse
    # The grid covers the image exactly (heatmap.grid_transform), so it resizes onto it.
    full = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return normalise(full, "minmax")
