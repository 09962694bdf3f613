"""Datamodule for users' own caption chips (rasters + a captioned vector layer)."""

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets.utils import Path

from ..datasets.user import FeatureChipSampler, UserCaptions
from .base import CLIP_MEAN, CLIP_STD, clip_augmentation


class UserCaptionsDataModule(GeoDataModule):
    """LightningDataModule for :class:`~dgtrs_geo.datasets.UserCaptions`.

    One chip per feature per epoch (shuffled for training). With ``split_column``
    each stage uses its own features; without it every stage uses all of them,
    which suits fine-tuning on one small area (validation then measures fit).
    Batches follow the image-text contract: ``image`` normalised for CLIP,
    ``caption_short`` and ``caption_long`` lists.
    """

    def __init__(
        self,
        paths: Path | Iterable[Path],
        vectors: Path,
        caption_column: str,
        long_caption_column: str | None = None,
        split_column: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Initialize a new UserCaptionsDataModule instance.

        Args:
            paths: Raster files, or folders searched for them.
            vectors: Vector file with the captioned features.
            caption_column: Attribute holding the (short) caption.
            long_caption_column: Attribute holding a long description, if any.
            split_column: Attribute naming each feature's split, if any.
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size (``model.image_size``).
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
            seed: Seed of the training order.
            **kwargs: Additional keyword arguments passed to
                :class:`~dgtrs_geo.datasets.UserCaptions` (``layer``,
                ``chip_size``, ``units``, ``bands``, ``crs``, ``res``).
        """
        super().__init__(
            UserCaptions,
            batch_size=batch_size,
            num_workers=num_workers,
            paths=paths,
            vectors=vectors,
            caption_column=caption_column,
            long_caption_column=long_caption_column,
            split_column=split_column,
            **kwargs,
        )
        self.seed = seed
        self.aug = clip_augmentation(image_size, mean, std)

    def _dataset(self, split: str) -> UserCaptions:
        use_split = split if self.kwargs["split_column"] is not None else None
        return UserCaptions(split=use_split, **self.kwargs)

    def setup(self, stage: str) -> None:
        """Set up datasets and samplers of a stage; predict runs on the test split.

        Args:
            stage: Either 'fit', 'validate', 'test', or 'predict'.
        """
        if stage == "fit":
            self.train_dataset = self._dataset("train")
            generator = torch.Generator().manual_seed(self.seed)
            self.train_sampler = FeatureChipSampler(self.train_dataset, True, generator)
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset("val")
            self.val_sampler = FeatureChipSampler(self.val_dataset)
        if stage == "test":
            self.test_dataset = self._dataset("test")
            self.test_sampler = FeatureChipSampler(self.test_dataset)
        if stage == "predict":
            self.predict_dataset = self._dataset("test")
            self.predict_sampler = FeatureChipSampler(self.predict_dataset)
