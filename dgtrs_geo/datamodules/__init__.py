"""TorchGeo datamodules yielding CLIP-ready image batches with caption lists."""

from .base import CLIP_MEAN, CLIP_STD, ImageTextDataModule, clip_augmentation, collate_captions
from .captions import CAPTION_DATASETS, CaptionDataModule
from .dgtrsd import DGTRSDDataModule
from .synthetic import SyntheticScenesDataModule
from .user import UserCaptionsDataModule

__all__ = [
    "CAPTION_DATASETS",
    "CLIP_MEAN",
    "CLIP_STD",
    "CaptionDataModule",
    "DGTRSDDataModule",
    "ImageTextDataModule",
    "SyntheticScenesDataModule",
    "UserCaptionsDataModule",
    "clip_augmentation",
    "collate_captions",
]
