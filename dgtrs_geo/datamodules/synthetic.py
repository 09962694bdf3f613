"""SyntheticScenes datamodule."""

from collections.abc import Sequence

from ..datasets.synthetic import SyntheticScenes
from ..tokens import CLIP_CONTEXT_LENGTH, DGTRS_CONTEXT_LENGTH
from .base import CLIP_MEAN, CLIP_STD, SyntheticDataModule


class SyntheticScenesDataModule(SyntheticDataModule):
    """LightningDataModule for :class:`~dgtrs_geo.datasets.SyntheticScenes`.

    Each split draws its own scenes, so validation and test scenes are never
    seen in training.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        train_length: int = 2000,
        val_length: int = 200,
        test_length: int = 200,
        scene_size: int = 64,
        num_objects: tuple[int, int] = (2, 4),
        late_token: int = CLIP_CONTEXT_LENGTH,
        max_tokens: int = DGTRS_CONTEXT_LENGTH,
        seed: int = 0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        """Initialize a new SyntheticScenesDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size; scenes are resized to it.
            train_length: Number of training scenes.
            val_length: Number of validation scenes.
            test_length: Number of test (and predict) scenes.
            scene_size: Width and height the scenes are drawn at.
            num_objects: Inclusive range of objects per scene.
            late_token: Token position from which the object facts start in the
                long descriptions.
            max_tokens: Token budget of the long descriptions.
            seed: Seed of the whole dataset.
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
        """
        super().__init__(
            SyntheticScenes,
            batch_size,
            num_workers,
            image_size,
            mean,
            std,
            train_length=train_length,
            val_length=val_length,
            test_length=test_length,
            scene_size=scene_size,
            num_objects=num_objects,
            late_token=late_token,
            max_tokens=max_tokens,
            seed=seed,
        )
