"""Reference mode against a hand-coded version of the published SeLo recipe (tiny real model)."""

import cv2
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from dgtrs_geo.localization import (
    fast_probability_map,
    localize,
    reference_probability_map,
)


def _scene(height: int = 90, width: int = 120) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8)
    image[20:50, 70:110] = (230, 40, 30)
    image[60:85, 10:40] = (30, 200, 60)
    return image


def _hand_coded_recipe(image: np.ndarray, query: str, model, scales) -> np.ndarray:
    """The recipe as written in docs/protocols.md section 7, one crop at a time, no shared code."""
    height, width = image.shape[:2]
    windows = set()
    for s in scales:
        for offset in (0, s // 2):
            for y in range(offset, height, s):
                for x in range(offset, width, s):
                    w, h = min(s, width), min(s, height)
                    windows.add((min(x, width - w), min(y, height - h), w, h))
    text = model.encode_text([query])[0].numpy()
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for x, y, w, h in sorted(windows):
        crop = Image.fromarray(image[y : y + h, x : x + w]).resize((256, 256), Image.BICUBIC)
        embedding = model.encode_image(model.preprocess(crop)[None])[0].numpy()
        total[y : y + h, x : x + w] += float(embedding @ text)
        count[y : y + h, x : x + w] += 1
    mean = total / count
    p = (mean - mean.min()) / (mean.max() - mean.min())
    return cv2.medianBlur(np.uint8(255 * p), 251).astype(np.float32) / 255


def test_reference_map_equals_hand_coded_recipe(tiny_model) -> None:
    image = _scene()
    scales = (32, 64)
    expected = _hand_coded_recipe(image, "a red roof", tiny_model, scales)
    got = reference_probability_map(image, "a red roof", tiny_model, scales=scales)
    assert got.shape == image.shape[:2] and got.dtype == np.float32
    # Batched forwards can move a score by float rounding: allow one grey level.
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-7
    assert np.mean(got == expected) > 0.99


def test_reference_jpeg_roundtrip_and_fast_map(tiny_model) -> None:
    image = _scene()
    plain = reference_probability_map(image, "a lake", tiny_model, scales=(32, 64))
    jpeg = reference_probability_map(
        image, "a lake", tiny_model, scales=(32, 64), jpeg_roundtrip=True
    )
    gray = np.uint8(np.rint(plain * 255))
    expected = cv2.imdecode(cv2.imencode(".jpg", gray)[1], cv2.IMREAD_GRAYSCALE) / 255
    np.testing.assert_allclose(jpeg, expected, atol=1e-6)
    fast = fast_probability_map(image, "a lake", tiny_model, scales=(32, 64))
    assert fast.shape == image.shape[:2]
    assert np.nanmin(fast) == 0 and np.nanmax(fast) == pytest.approx(1)


def test_reference_mode_on_a_raster_matches_the_array_function(tiny_model, tmp_path) -> None:
    image = _scene()
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 120, "height": 90, "count": 3, "dtype": "uint8"}
    transform = from_origin(300000, 5000000, 0.5, 0.5)
    with rasterio.open(path, "w", crs="EPSG:32632", transform=transform, **profile) as dst:
        dst.write(image.transpose(2, 0, 1))
    (result,) = localize(
        path, "a red roof", tiny_model, scales=(32, 64), reference=True, index_dir=tmp_path
    )
    expected = reference_probability_map(image, "a red roof", tiny_model, scales=(32, 64))
    np.testing.assert_allclose(result.heatmap, expected, atol=1e-6)
    assert result.mode == "reference" and result.transform == transform


def test_empty_query_and_truncation_warning(tiny_model) -> None:
    image = _scene(40, 40)
    with pytest.raises(ValueError, match="empty"):
        reference_probability_map(image, "  ", tiny_model, scales=(32,))
    long_query = " ".join(["a small white building next to a parking lot"] * 40)
    with pytest.warns(UserWarning, match=r"\d+ tokens, more than this model's 248"):
        fast_probability_map(image, long_query, tiny_model, scales=(32,))
