"""Images as the chat-completions API takes them: base64 data URLs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["data_url_to_image", "image_to_data_url", "read_rgb", "to_uint8"]


def to_uint8(bands: np.ndarray) -> np.ndarray:
    """Return ``(3, H, W)`` raster values as 8-bit, stretching anything outside 0..255.

    Values already in 0..255 (8-bit imagery, even when stored as float) are kept; others (16-bit
    reflectance, floats) are stretched from their 2nd to 98th percentile, since such values look
    black or saturated to a model that expects 8-bit photographs.
    """
    if bands.dtype == np.uint8:
        return bands
    if bands.min() >= 0 and bands.max() <= 255:
        return bands.round().astype(np.uint8)
    lo, hi = np.percentile(bands, (2, 98))
    scaled = (bands.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def read_rgb(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB.

    GeoTIFFs go through rasterio: the first three bands (or the single band, repeated) are made
    8-bit by :func:`to_uint8`.

    Args:
        path: the image file.

    Returns:
        The image in RGB mode.

    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as src:
            bands = src.read(indexes=[1, 2, 3] if src.count >= 3 else [1, 1, 1])
        return Image.fromarray(np.moveaxis(to_uint8(bands), 0, -1), mode="RGB")
    with Image.open(path) as image:
        return image.convert("RGB")


def image_to_data_url(path: str | Path, max_side: int = 1024) -> str:
    """Return the image at ``path`` as a PNG data URL, shrunk to at most ``max_side`` pixels.

    PNG keeps the pixels exact; shrinking keeps requests small (vision-language servers resize
    large images anyway, after paying to receive them).
    """
    image = read_rgb(path)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def data_url_to_image(url: str) -> Image.Image:
    """Decode a base64 image data URL back to an RGB image.

    Raises:
        ValueError: if ``url`` is not a base64 data URL.

    """
    header, _, payload = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64")):
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        return image.convert("RGB")
