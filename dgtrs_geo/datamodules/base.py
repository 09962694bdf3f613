"""Shared pieces of the image-text datamodules: CLIP augmentation, collation, base classes."""

from collections.abc import Callable, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import NonGeoDataset

#: OpenAI CLIP normalisation, used by DGTRS-CLIP (docs/protocols.md section 1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_augmentation(
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> K.AugmentationSequential:
    """Batch transform from 0..255 images to a CLIP model's input.

    Bicubic resize of the short side to ``image_size``, center crop, then CLIP
    normalisation, like the model's own ``preprocess`` but on batches on the device.

    Args:
        image_size: The model's input size.
        mean: Per-channel mean of images scaled to 0..1.
        std: Per-channel standard deviation of images scaled to 0..1.

    Returns:
        A kornia dict-mode pipeline; caption keys pass through untouched.
    """
    # The datasets yield 0..255 (TorchGeo's convention): fold the /255 into the stats
    return K.AugmentationSequential(
        K.Resize(image_size, side="short", resample="bicubic", antialias=True),
        K.CenterCrop(image_size),
        K.Normalize(
            mean=torch.tensor(mean) * 255,
            std=torch.tensor(std) * 255,
        ),
        data_keys=None,
        keepdim=True,
    )


def collate_captions(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and keep captions as Python lists.

    ``default_collate`` would transpose a per-sample list of captions (RSITMD's
    five) into five lists of B; here ``captions`` stays one list per sample.

    Args:
        samples: Samples with an ``image`` tensor of one shape and caption keys.

    Returns:
        ``{"image": Tensor[B, 3, H, W], key: list(values) for every other key}``.
    """
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
    for key in samples[0]:
        if key == "image":
            continue
        values = [s[key] for s in samples]
        if isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


class ImageTextDataModule(NonGeoDataModule):
    """Base for datamodules yielding CLIP-ready image batches with caption lists.

    Batch contract: ``{"image": FloatTensor[B, 3, S, S] normalised,
    "caption_short": list[str], "caption_long": list[str]}`` (plus ``captions``:
    a list of lists where the dataset has several captions per image).
    Tokenisation is left to the task, which owns the tokenizer.
    """

    def __init__(
        self,
        dataset_class: type[NonGeoDataset],
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        """Initialize a new ImageTextDataModule instance.

        Args:
            dataset_class: Dataset class, built with ``split=`` and ``**kwargs``.
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size (``model.image_size``).
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
            **kwargs: Additional keyword arguments passed to ``dataset_class``.
        """
        super().__init__(dataset_class, batch_size, num_workers, **kwargs)
        self.image_size = image_size
        self.collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] = collate_captions
        self.aug = clip_augmentation(image_size, mean, std)

    def setup(self, stage: str) -> None:
        """Set up the datasets of a stage; predict runs on the test split.

        Args:
            stage: Either 'fit', 'validate', 'test', or 'predict'.
        """
        if stage == "fit":
            self.train_dataset = self._dataset("train")
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset("val")
        if stage == "test":
            self.test_dataset = self._dataset("test")
        if stage == "predict":
            self.predict_dataset = self._dataset("test")

    def _dataset(self, split: str) -> Dataset[dict[str, Tensor]]:
        """Build the dataset of *split*; the one method subclasses override to change it."""
        return self.dataset_class(split=split, **self.kwargs)  # type: ignore[call-arg]


class SyntheticDataModule(ImageTextDataModule):
    """Base for datasets drawn on the fly, built with ``split=`` and ``length=``.

    Each split draws its own samples, so validation and test samples are never
    seen in training; predict runs on the test split.
    """

    def __init__(
        self,
        dataset_class: type[NonGeoDataset],
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        *,
        train_length: int,
        val_length: int,
        test_length: int,
        **kwargs: Any,
    ) -> None:
        """Initialize a new SyntheticDataModule instance.

        Args:
            dataset_class: Dataset class, built with ``split=``, ``length=`` and ``**kwargs``.
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size; samples are resized to it.
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
            train_length: Number of training samples.
            val_length: Number of validation samples.
            test_length: Number of test (and predict) samples.
            **kwargs: Additional keyword arguments passed to ``dataset_class``.
        """
        super().__init__(dataset_class, batch_size, num_workers, image_size, mean, std, **kwargs)
        self.lengths = {"train": train_length, "val": val_length, "test": test_length}

    def _dataset(self, split: str) -> Dataset[dict[str, Tensor]]:
        return self.dataset_class(  # type: ignore[call-arg]
            split=split, length=self.lengths[split], **self.kwargs
        )
