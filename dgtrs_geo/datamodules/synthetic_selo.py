"""SyntheticSeLoWindows datamodule: chips that look like localization's windows."""

from collections.abc import Sequence

from ..datasets.synthetic_selo import SyntheticSeLoWindows
from .base import CLIP_MEAN, CLIP_STD, SyntheticDataModule


class SyntheticSeLoDataModule(SyntheticDataModule):
    """LightningDataModule for :class:`~dgtrs_geo.datasets.synthetic_selo.SyntheticSeLoWindows`.

    Each split cuts its windows from its own scenes, so validation and test scenes are never
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
        scene_size: int = 1024,
        scales: Sequence[int] = (256, 512, 768),
        chip_size: int = 64,
        object_size: tuple[float, float] = (32.0, 96.0),
        object_bias: float = 0.6,
        windows_per_scene: int = 8,
        late_token: int = 77,
        max_tokens: int = 248,
        seed: int = 0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        """Initialize a new SyntheticSeLoDataModule instance.

        Args:
            batch_size: Size of each mini-batch.
            num_workers: Number of workers for parallel data loading.
            image_size: The model's input size; chips are resized to it.
            train_length: Number of training chips.
            val_length: Number of validation chips.
            test_length: Number of test (and predict) chips.
            scene_size: Side of the scenes the windows are cut from, in pixels.
            scales: Window sides in scene pixels (localization's window sizes).
            chip_size: Side the chips are rendered at.
            object_size: Range of the objects' half extent in scene pixels.
            object_bias: Chance that a window is placed around an object.
            windows_per_scene: Consecutive chips cut from one scene.
            late_token: Token position from which long captions state their facts.
            max_tokens: Token budget of long captions.
            seed: Seed of the whole dataset.
            mean: Normalisation mean (``model.mean``).
            std: Normalisation standard deviation (``model.std``).
        """
        super().__init__(
            SyntheticSeLoWindows,
            batch_size,
            num_workers,
            image_size,
            mean,
            std,
            train_length=train_length,
            val_length=val_length,
            test_length=test_length,
            scene_size=scene_size,
            scales=tuple(scales),
            chip_size=chip_size,
            object_size=tuple(object_size),
            object_bias=object_bias,
            windows_per_scene=windows_per_scene,
            late_token=late_token,
            max_tokens=max_tokens,
            seed=seed,
        )
