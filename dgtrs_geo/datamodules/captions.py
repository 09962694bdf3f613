"""Datamodule for the five-captions retrieval sets: RSITMD, RSICD, UCM-Captions."""

from collections.abc import Sequence
from typing import Any

from ..datasets.captions import RSICD, RSITMD, RSCaptionDataset, UCMCaptions
from .base import CLIP_MEAN, CLIP_STD, ImageTextDataModule

#: Dataset name -> class; names are case-insensitive.
CAPTION_DATASETS: dict[str, type[RSCaptionDataset]] = {
    "rsitmd": RSITMD,
    "rsicd": RSICD,
    "ucm": UCMCaptions,
}


class CaptionDataModule(ImageTextDataModule):
    """LightningDataModule for RSITMD, RSICD or UCM-Captions, chosen by name.

    Batches carry ``captions`` (five per image, a list per sample) besides
    ``caption_short`` and ``caption_long``. The validation split is configurable
    because some distributions ship only train and test.
    """

    dataset_class: type[RSCaptionDataset]

    def __init__(
        self,
        name: str = "rsitmd",
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        val_split: str = "val",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        """Initialize a new CaptionDataModule instance.

        Args:
            name: "rsitmd", "rsicd" or "ucm".
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size (``model.image_size``).
            val_split: Split of the JSON used for validation.
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
            **kwargs: Additional keyword arguments passed to the dataset
                (``root``, ``download``, ``checksum``, ``skip_corrupt``).

        Raises:
            ValueError: If *name* is unknown.
        """
        key = name.lower()
        if key not in CAPTION_DATASETS:
            raise ValueError(
                f"Unknown caption dataset {name!r}; expected one of {list(CAPTION_DATASETS)}."
            )
        super().__init__(
            CAPTION_DATASETS[key], batch_size, num_workers, image_size, mean, std, **kwargs
        )
        self.name = key
        self.val_split = val_split

    def _dataset(self, split: str) -> RSCaptionDataset:
        return self.dataset_class(split=self.val_split if split == "val" else split, **self.kwargs)
