import threading

import numpy as np
import pytest
import torch
from PIL import Image

from dgtrs_geo.localization import Cancelled
from dgtrs_geo.localization.encode import encode_windows, preprocess_batch
from dgtrs_geo.localization.heatmap import auto_cell
from dgtrs_geo.localization.raster import ArraySource
from dgtrs_geo.localization.windows import plan_windows


class MeanColourModel:
    """Embeds an image as its mean normalised colour; records the batch sizes it was given."""

    model_id = "mean-colour"
    image_size = 8
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)
    device = torch.device("cpu")
    preprocess = None

    def __init__(self, max_batch: int | None = None) -> None:
        self.max_batch = max_batch
        self.batches: list[int] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_batch is not None and len(x) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(len(x))
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)), dim=1)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (64, 80, 3)).astype(np.uint8)


def test_out_of_memory_halves_the_batch_and_goes_on() -> None:
    plan = plan_windows(80, 64, scales=(16,))
    model = MeanColourModel(max_batch=5)
    kept, embeddings = encode_windows(model, ArraySource(_image()), plan.windows, batch_size=32)
    assert len(kept) == len(plan) and embeddings.shape == (len(plan), 3)
    assert max(model.batches) == 4  # 32 -> 16 -> 8 -> 4
    reference, _ = encode_windows(MeanColourModel(), ArraySource(_image()), plan.windows)
    np.testing.assert_array_equal(kept, reference)
    with pytest.raises(RuntimeError, match="out of memory"):
        encode_windows(MeanColourModel(max_batch=0), ArraySource(_image()), plan.windows)


def test_batches_never_mix_window_shapes() -> None:
    plan = plan_windows(80, 64, scales=(16, 24, 100))  # 100 px windows clamp to 80 x 64
    model = MeanColourModel()
    kept, _ = encode_windows(model, ArraySource(_image()), plan.windows, batch_size=7)
    assert len(kept) == len(plan)
    assert sum(model.batches) == len(plan)


def test_cancel_between_batches() -> None:
    plan = plan_windows(80, 64, scales=(16,))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        encode_windows(MeanColourModel(), ArraySource(_image()), plan.windows, cancel=cancel)


def test_device_resize_matches_pil_preprocessing_closely(tiny_model) -> None:
    crop = _image()[:48, :48]
    fast = preprocess_batch(torch.from_numpy(crop.transpose(2, 0, 1))[None], tiny_model)[0]
    pil = tiny_model.preprocess(Image.fromarray(crop))
    assert fast.shape == pil.shape == (3, tiny_model.image_size, tiny_model.image_size)
    # Both bicubic with antialiasing; they differ only by rounding and kernel details.
    assert (fast - pil).abs().mean() < 0.05


def test_auto_cell() -> None:
    assert auto_cell((256, 512, 768), 10000, 10000) == 16
    assert auto_cell((32,), 100, 100) == 2
    assert auto_cell((8,), 100, 100) == 1
    assert auto_cell((16,), 100000, 500) == 25  # 4096 cells at most along the longer side


def test_default_batch_size_follows_free_gpu_memory(monkeypatch) -> None:
    from dgtrs_geo.localization import encode

    assert encode.default_batch_size(torch.device("cpu")) == 32
    for free, expected in ((70 * 2**30, 1024), (10 * 2**30, 128), (100 * 2**20, 16)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (f, 80 * 2**30))
        assert encode.default_batch_size(torch.device("cuda")) == expected
