"""The duck types the engine passes around, as ``typing.Protocol`` classes.

Localization, evaluation, the catalog, the CLI and the worker accept any object with the right
members, not only the classes this package defines: tests hand them small fakes with known
answers, and users may wrap a model of their own. These protocols name those members once, for
type checkers and for ``isinstance`` checks at the doors (all are ``runtime_checkable``; such a
check looks only at which members exist, not at their signatures).

Models, from the least a caller may need to everything :func:`dgtrs_geo.load_model` returns:

- :class:`ImageTextModel`: embeds images and texts, names its weights, knows its input size and
  device. Enough to score an existing embedding index.
- :class:`WindowModel`: adds the normalisation and preprocessing that encoding raster windows
  needs (the fast device-side resize, and the reference recipe's PIL preprocessing).
- :class:`ClipModel`: adds the tokenizer, the context length and the underlying open_clip module
  (token counts, zero-shot prompt ensembles). :class:`~dgtrs_geo.models.EmbeddingModel` is one.

Window sources: :class:`WindowSource` reads 8-bit RGB windows and validity masks in pixel space
(:class:`~dgtrs_geo.localization.raster.ArraySource` is one); :class:`RasterFileSource` is a source
backed by a file, which can therefore be fingerprinted and described for an embedding index
(:class:`~dgtrs_geo.localization.raster.RasterSource`).

This module imports neither torch nor rasterio at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from affine import Affine
    from numpy.typing import NDArray
    from open_clip import CLIP
    from PIL import Image
    from rasterio.crs import CRS
    from torch import Tensor

    from .tokens import ClipTokenizer

__all__ = [
    "ClipModel",
    "ImageTextModel",
    "PixelRegion",
    "RasterFileSource",
    "WindowModel",
    "WindowSource",
]

#: A block of pixels, ``(col_off, row_off, width, height)``.
PixelRegion = tuple[int, int, int, int]


@runtime_checkable
class ImageTextModel(Protocol):
    """A model that embeds images and texts into one space, L2-normalised, in float32."""

    @property
    def model_id(self) -> str:
        """Stable identifier of the weights; keys embedding caches and indexes."""
        ...

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images ``encode_image`` takes."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model runs; inputs are moved there."""
        ...

    def encode_image(self, images: Tensor) -> Tensor:
        """Embed normalised images ``[B, 3, S, S]``; return ``[B, D]`` unit vectors."""
        ...

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed texts; return ``[N, D]`` unit vectors on the CPU."""
        ...


@runtime_checkable
class WindowModel(ImageTextModel, Protocol):
    """An :class:`ImageTextModel` that also says how its images are normalised and prepared."""

    @property
    def mean(self) -> Sequence[float]:
        """Per-channel mean subtracted from pixels scaled to [0, 1] (R, G, B)."""
        ...

    @property
    def std(self) -> Sequence[float]:
        """Per-channel standard deviation pixels are divided by (R, G, B)."""
        ...

    @property
    def preprocess(self) -> Callable[[Image.Image], Tensor]:
        """PIL image -> normalised ``[3, S, S]`` tensor (bicubic resize, centre crop)."""
        ...


@runtime_checkable
class ClipModel(WindowModel, Protocol):
    """A loaded CLIP, as :func:`dgtrs_geo.load_model` returns it."""

    @property
    def clip(self) -> CLIP:
        """The underlying open_clip ``CLIP`` module (unnormalised ``encode_text``)."""
        ...

    @property
    def context_length(self) -> int:
        """Text tokens the model reads, start and end tokens included."""
        ...

    @property
    def tokenizer(self) -> ClipTokenizer:
        """CLIP's BPE tokenizer at this model's context length."""
        ...

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding space."""
        ...

    def count_tokens(self, text: str) -> int:
        """Return the tokens ``text`` needs, start and end tokens included, before any cut."""
        ...

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Return ``[N, context_length]`` token ids, warning about any text that was cut."""
        ...


@runtime_checkable
class WindowSource(Protocol):
    """Pixels to encode: 8-bit RGB windows and validity masks, read in pixel space."""

    @property
    def width(self) -> int:
        """Columns of the raster."""
        ...

    @property
    def height(self) -> int:
        """Rows of the raster."""
        ...

    @property
    def crs(self) -> CRS | None:
        """Coordinate reference system of ``transform``; None for plain images."""
        ...

    @property
    def transform(self) -> Affine:
        """Pixel (col, row) -> map (x, y) geotransform; the identity for plain images."""
        ...

    def read(self, window: Sequence[int]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """Read ``(col_off, row_off, width, height)`` at full resolution.

        Returns ``(rgb, valid)``: uint8 ``[3, h, w]`` (invalid pixels 0) and bool ``[h, w]``.
        """
        ...

    def read_decimated(
        self, max_side: int, region: PixelRegion | None = None, stretched: bool = True
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Read the raster or ``region`` with its longer side at most ``max_side`` pixels.

        Returns ``(data, valid)``: ``[3, h, w]`` (uint8 when ``stretched``) and bool ``[h, w]``.
        """
        ...

    def valid_grid(
        self, shape: tuple[int, int], region: PixelRegion | None = None
    ) -> NDArray[np.bool_] | None:
        """Return the validity mask of ``region`` resampled to ``shape``; None if all valid."""
        ...

    def close(self) -> None:
        """Release file handles (a later read reopens them)."""
        ...


@runtime_checkable
class RasterFileSource(WindowSource, Protocol):
    """A :class:`WindowSource` read from a file, so an embedding index can be kept for it."""

    @property
    def path(self) -> Path:
        """The file the pixels come from."""
        ...

    def fingerprint(self) -> str:
        """Return a digest that changes whenever the pixels this source reads change."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return what identifies the pixels this source yields (size, CRS, bands, stretch)."""
        ...
