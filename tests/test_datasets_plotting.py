"""The shared caption plot: what each dataset's ``plot()`` draws."""

import textwrap
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from dgtrs_geo.datasets import RSITMD, UserCaptions
from dgtrs_geo.datasets.utils import CaptionPlotMixin, plot_caption_sample

DATA = Path(__file__).parent / "data"


def drawn(fig: Figure) -> np.ndarray:
    (image,) = fig.axes[0].get_images()
    return np.asarray(image.get_array())


def sample_with(values: list[float]) -> dict[str, Any]:
    # A 2 x 2 image whose red channel holds *values*; green and blue are 0 and 255
    red = torch.tensor(values, dtype=torch.float32).reshape(2, 2)
    image = torch.stack([red, torch.zeros(2, 2), torch.full((2, 2), 255.0)])
    return {"image": image, "caption_short": "a red roof", "caption_long": "A red roof. " * 12}


def test_image_is_scaled_from_0_255_and_clipped() -> None:
    fig = plot_caption_sample(sample_with([0.0, 51.0, 300.0, -5.0]))
    expected = np.zeros((2, 2, 3))
    expected[..., 0] = [[0.0, 0.2], [1.0, 0.0]]  # 300 and -5 clip to the 0..1 display range
    expected[..., 2] = 1.0
    np.testing.assert_allclose(drawn(fig), expected, atol=1e-6)
    assert not fig.axes[0].axison
    plt.close(fig)


def test_titles_wrap_each_caption_then_the_prediction() -> None:
    sample = {**sample_with([0.0] * 4), "prediction": "a roof", "other": "not shown"}
    fig = plot_caption_sample(sample, suptitle="chip 3", width=30)
    expected = "\n".join(
        [
            textwrap.fill("caption_short: a red roof", 30),
            textwrap.fill("caption_long: " + "A red roof. " * 12, 30),
            "prediction: a roof",
        ]
    )
    assert fig.axes[0].get_title(loc="left") == expected
    assert max(len(line) for line in expected.splitlines()) <= 30
    assert fig.get_suptitle() == "chip 3"
    plt.close(fig)
    fig = plot_caption_sample(sample, show_titles=False)
    assert fig.axes[0].get_title(loc="left") == "" and fig.get_suptitle() == ""
    plt.close(fig)


class OnlyLong(CaptionPlotMixin):
    plot_keys: ClassVar[tuple[str, ...]] = ("caption_long", "captions")


def test_mixin_plot_shows_its_keys_in_order() -> None:
    sample = {**sample_with([0.0] * 4), "captions": ["one", "two"]}
    fig = OnlyLong().plot(sample, suptitle="s")
    title = fig.axes[0].get_title(loc="left")
    assert "caption_short" not in title
    assert title.splitlines()[-2:] == ["captions: one", "captions: two"]
    assert title.startswith("caption_long: A red roof.") and fig.get_suptitle() == "s"
    plt.close(fig)


def test_rsitmd_plot_shows_only_the_five_captions() -> None:
    ds = RSITMD(DATA / "rs_captions" / "rsitmd", split="train")
    sample = ds[0]
    fig = ds.plot(sample)
    lines = fig.axes[0].get_title(loc="left").splitlines()
    assert lines == [f"captions: {c}" for c in sample["captions"]]
    np.testing.assert_allclose(drawn(fig), sample["image"].permute(1, 2, 0).numpy() / 255)
    plt.close(fig)


def test_user_captions_plot_stretches_min_max() -> None:
    ds = UserCaptions(DATA / "user_captions", DATA / "user_captions" / "captions.gpkg", "caption")
    sample = sample_with([300.0, 500.0, 700.0, 1100.0])  # 12-bit-like red, 255 blue
    sample["image"][1] = 100.0  # green
    fig = ds.plot(sample)
    image = sample["image"].permute(1, 2, 0).numpy().astype(np.float64)
    # one stretch over all bands, from the sample's min (100) to its max (1100)
    np.testing.assert_allclose(drawn(fig), (image - 100) / 1000, atol=1e-6)
    assert fig.axes[0].get_title(loc="left").splitlines()[0] == "caption_short: a red roof"
    plt.close(fig)
    # a flat chip draws black instead of dividing by zero
    fig = ds.plot({**sample, "image": torch.full((3, 2, 2), 7.0)}, show_titles=False)
    np.testing.assert_array_equal(drawn(fig), np.zeros((2, 2, 3)))
    plt.close(fig)
