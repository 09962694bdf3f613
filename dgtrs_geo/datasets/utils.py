"""Helpers shared by the caption datasets: image loading, sentences, plotting."""

import re
import textwrap
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchgeo.datasets.utils import Path

from ..errors import InputError

#: Errors PIL raises for unreadable or truncated image files.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ManifestError(InputError):
    """Raised for an annotation entry that cannot be used; the message names where it is.

    An :class:`~dgtrs_geo.errors.InputError`, so a ``ValueError`` as it always was.
    """


class CorruptImageError(InputError, OSError):
    """Raised when an image file exists but cannot be decoded (an ``OSError`` as it always was)."""


def load_image(path: Path) -> Tensor:
    """Read an image file as a float RGB tensor.

    Args:
        path: Image file (any format PIL reads).

    Returns:
        Float tensor [3, H, W] with values in 0..255 (TorchGeo's convention).

    Raises:
        CorruptImageError: If the file cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            array = np.array(img.convert("RGB"), dtype=np.float32)
    except IMAGE_ERRORS as err:
        raise CorruptImageError(
            f"Cannot decode image {str(path)!r} ({err}); replace the file, or pass "
            "skip_corrupt=True to leave such images out."
        ) from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def is_readable_image(path: Path) -> bool:
    """Whether an image file decodes completely.

    Args:
        path: Image file.

    Returns:
        True if PIL decodes every pixel of it.
    """
    try:
        with Image.open(path) as img:
            # verify() misses truncated pixel data; a full load() does not
            img.load()
    except IMAGE_ERRORS:
        return False
    return True


def first_sentence(text: str) -> str:
    """Return the first sentence of a text (the short caption of a long one).

    Args:
        text: A caption of one or more sentences.

    Returns:
        Everything up to and including the first sentence-ending punctuation
        that is followed by white space, stripped; the whole text if none.
    """
    text = text.strip()
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


def plot_caption_sample(
    sample: dict[str, Any],
    show_titles: bool = True,
    suptitle: str | None = None,
    width: int = 60,
    keys: Sequence[str] = ("caption_short", "caption_long", "captions"),
) -> Figure:
    """Plot an image with its wrapped captions and, when given, the prediction.

    Args:
        sample: A sample with ``image`` (float [3, H, W], 0..255) and caption keys;
            ``prediction`` (a string) is shown below the captions when present.
        show_titles: Whether to draw the captions.
        suptitle: Optional figure title.
        width: Characters per wrapped line.
        keys: Caption keys to show, in order, when present in the sample.

    Returns:
        A matplotlib Figure with the rendered sample.
    """
    image = sample["image"].permute(1, 2, 0).numpy() / 255
    fig, ax = plt.subplots(figsize=(6, 8))
    ax.imshow(np.clip(image, 0, 1))
    ax.axis("off")

    if show_titles:
        lines = []
        for key in keys:
            if key not in sample:
                continue
            value = sample[key]
            texts = [value] if isinstance(value, str) else list(value)
            for text in texts:
                lines.append(textwrap.fill(f"{key}: {text}", width))
        if "prediction" in sample:
            lines.append(textwrap.fill(f"prediction: {sample['prediction']}", width))
        ax.set_title("\n".join(lines), fontsize=8, loc="left")

    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig


class CaptionPlotMixin:
    """TorchGeo's ``plot()`` for caption datasets: the image with its wrapped captions.

    Put it first among the bases (``class X(CaptionPlotMixin, NonGeoDataset)``) so its ``plot``
    wins over one a TorchGeo base may define. A dataset whose samples are not 0..255 overrides
    :meth:`plot` to rescale the image, then calls it.
    """

    #: Caption keys :meth:`plot` shows, in order, when present in the sample.
    plot_keys: ClassVar[tuple[str, ...]] = ("caption_short", "caption_long", "captions")

    def plot(
        self, sample: dict[str, Any], show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample with its wrapped captions (and ``prediction`` if present).

        Args:
            sample: A sample returned by ``__getitem__``.
            show_titles: Whether to show the captions.
            suptitle: Optional figure title.

        Returns:
            A matplotlib Figure with the rendered sample.
        """
        return plot_caption_sample(sample, show_titles, suptitle, keys=self.plot_keys)
