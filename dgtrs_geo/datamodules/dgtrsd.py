"""DGTRSD (caption manifest) datamodule."""

from collections.abc import Sequence
from typing import Any

from ..datasets.dgtrsd import DGTRSD
from .base import CLIP_MEAN, CLIP_STD, ImageTextDataModule


class DGTRSDDataModule(ImageTextDataModule):
    """LightningDataModule for :class:`~dgtrs_geo.datasets.DGTRSD` manifests.

    Splits come from the manifest's ``split`` key (or one manifest per split with
    ``{split}`` in its name); predict runs on the test split.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        **kwargs: Any,
    ) -> None:
        """Initialize a new DGTRSDDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size (``model.image_size``).
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
            **kwargs: Additional keyword arguments passed to
                :class:`~dgtrs_geo.datasets.DGTRSD` (``root``, ``manifest``,
                ``skip_corrupt``).
        """
        super().__init__(DGTRSD, batch_size, num_workers, image_size, mean, std, **kwargs)
