"""The engine's duck types: the classes of this package satisfy them, incomplete fakes do not."""

from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from dgtrs_geo.localization.raster import ArraySource, RasterSource
from dgtrs_geo.protocols import (
    ClipModel,
    ImageTextModel,
    RasterFileSource,
    WindowModel,
    WindowSource,
)


class TextOnly:
    """Has every ImageTextModel member except ``encode_image``."""

    model_id = "text-only"
    image_size = 16
    device = torch.device("cpu")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.ones(len(texts), 2)


class ScoringModel(TextOnly):
    """Enough to score an existing index, not enough to encode windows."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(images), 2)


def test_loaded_model_is_every_model_protocol(tiny_model) -> None:
    for protocol in (ImageTextModel, WindowModel, ClipModel):
        assert isinstance(tiny_model, protocol), protocol.__name__


def test_models_with_missing_members_are_told_apart() -> None:
    assert not isinstance(TextOnly(), ImageTextModel)
    assert isinstance(ScoringModel(), ImageTextModel)
    assert not isinstance(ScoringModel(), WindowModel)


def test_sources(tmp_path: Path) -> None:
    path = tmp_path / "tiny.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 3, "dtype": "uint8"}
    with rasterio.open(
        path, "w", crs="EPSG:32632", transform=Affine(1, 0, 0, 0, -1, 8), **profile
    ) as dst:
        dst.write(np.zeros((3, 8, 8), dtype=np.uint8))
    raster = RasterSource(path)
    array = ArraySource(np.zeros((8, 8, 3), dtype=np.uint8))
    assert isinstance(raster, WindowSource) and isinstance(raster, RasterFileSource)
    assert isinstance(array, WindowSource) and not isinstance(array, RasterFileSource)
    assert not isinstance(tmp_path, WindowSource)
