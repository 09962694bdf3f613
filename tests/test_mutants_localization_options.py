"""Tests written from the mutation run on localization options and encoding: each pins a behaviour a surviving mutant changed.

Covers ``dgtrs_geo/localization/options.py`` (coercion, the messages that name the option and its
flag, the model's patch size, the refused-plan estimate) and ``dgtrs_geo/localization/encode.py``
(uint8 resize on the CPU, windows moved to the model's device, out-of-memory detection, the
``reference`` and ``num_workers`` defaults, cancellation, empty results). Expected values are
hand-worked (the normalised colour of a window, durations) or come from an independent float64
resize. benchmarks/results/mutation-triage.md lists the mutants each test kills and the survivors
that are equivalent.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgtrs_geo.errors import Cancelled, InputError
from dgtrs_geo.localization import encode
from dgtrs_geo.localization.encode import encode_windows, preprocess_batch
from dgtrs_geo.localization.options import LocalizationOptions, model_patch_size
from dgtrs_geo.localization.raster import ArraySource

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# --- options.py -------------------------------------------------------------------------------


def _message(**options) -> str:
    with pytest.raises(InputError) as caught:
        LocalizationOptions(**options).validate()
    return str(caught.value)


def test_optional_numbers_keep_their_values() -> None:
    """Optional numeric options keep a given value (coerced from text), and None stays None."""
    options = LocalizationOptions(smooth=2, threshold="0.3", cell="4", batch_size=8, num_workers=0)
    assert (options.smooth, options.threshold, options.cell) == (2.0, 0.3, 4)
    assert (options.batch_size, options.num_workers) == (8, 0)
    assert isinstance(options.smooth, float) and isinstance(options.cell, int)
    assert LocalizationOptions(smooth=None).smooth is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": True}, "option batch_size (--batch-size) cannot be True: not a number"),
        (
            {"bands": [1.5, 2, 3]},
            "option bands (--bands) cannot be [1.5, 2, 3]: not whole numbers",
        ),
        (
            {"stretch": 3},
            "option stretch (--stretch) cannot be 3: expected 'auto', 'none', a Stretch or "
            "{'low': [...], 'high': [...]}",
        ),
    ],
)
def test_values_of_the_wrong_kind_are_refused_with_the_reason(options, message) -> None:
    """A bool for a number, fractional bands and an unknown stretch: the whole message."""
    with pytest.raises(InputError) as caught:
        LocalizationOptions(**options)
    assert str(caught.value) == message


def test_validate_message_lists_each_problem_in_full() -> None:
    """The exact one-line message: prefix, each option with its flag, range, note and value."""
    assert _message(min_valid=1.2, cell=0, device="gpu") == (
        "invalid option(s): min_valid (--min-valid) must be between 0 and 1, got 1.2; "
        "cell (--cell) must be >= 1 (pixels), got 0; "
        "device (--device) must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"
    )


def test_a_models_own_patch_size_attribute_is_used() -> None:
    """``model.patch_size`` (an int or a pair) wins over ``clip.visual``; scales below it are refused."""
    clip = SimpleNamespace(visual=SimpleNamespace(patch_size=8))
    assert model_patch_size(SimpleNamespace(patch_size=(14, 14), clip=clip)) == 14
    assert model_patch_size(SimpleNamespace(patch_size=32)) == 32
    model = SimpleNamespace(patch_size=(14, 14))
    LocalizationOptions(scales=[14, 64]).validate(model)
    with pytest.raises(InputError) as caught:
        LocalizationOptions(scales=[8, 64]).validate(model)
    assert str(caught.value) == (
        "invalid option(s): scales (--scales) must be at least the model's 14 px patch "
        "(in pixels), got 8"
    )


@pytest.mark.parametrize(
    ("windows", "device", "estimate"),
    [
        # 5e6 / 500 = 10,000 s = 2.78 h: hours from two hours on.
        (5_000_000, torch.device("cuda", 0), "about 3 hours of encoding at 500 windows/s"),
        # 1.2e7 / 50 = 240,000 s = 2.78 days: days from two days on.
        (12_000_000, "mps", "about 3 days of encoding at 50 windows/s (a ViT-B/16 on mps)"),
    ],
)
def test_refused_plan_estimates_hours_and_days_from_two_units_on(windows, device, estimate):
    """The time estimate switches to a larger unit once it is at least two of it."""
    with pytest.raises(InputError) as caught:
        LocalizationOptions().check_plan_size(windows, "big.tif", device)
    assert estimate in str(caught.value)


# --- encode.py --------------------------------------------------------------------------------


class ColourModel:
    """Embeds a batch as its mean normalised colour; optionally fails above a batch size."""

    model_id = "colour"
    image_size = 8
    mean, std = MEAN, STD
    device = torch.device("cpu")

    def __init__(self, limit: int | None = None, error: str = "", device: str = "cpu") -> None:
        self.limit, self.error = limit, error
        self.device = torch.device(device)
        self.seen: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def preprocess(self, image) -> torch.Tensor:  # the reference path: recognisably different
        return torch.full((3, 8, 8), 7.0)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.limit is not None and len(x) > self.limit:
            raise RuntimeError(self.error)
        self.seen.append((x.device.type, x.dtype, tuple(x.shape)))
        if x.device.type == "meta":  # a stand-in accelerator: no values, only where it ran
            return torch.ones(len(x), 3)
        return x.mean(dim=(2, 3))


def _image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (16, 32, 3)).astype(np.uint8)


def _grid8() -> np.ndarray:
    """The eight 8 px windows (col, row, w, h) of the 16 x 32 image: the model's size, no resize."""
    return np.array([[c, r, 8, 8] for r in (0, 8) for c in (0, 8, 16, 24)])


def _expected_colours(image: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Mean of (pixel / 255 - mean) / std over each window, by hand."""
    return np.array(
        [
            ((image[r : r + h, c : c + w] / 255.0 - MEAN) / STD).mean(axis=(0, 1))
            for c, r, w, h in windows
        ]
    )


def test_cpu_resize_works_on_uint8_pixels() -> None:
    """On the CPU the resize runs on uint8: every resized value is a whole 8-bit level."""
    pixels = torch.from_numpy(_image()[:, :16].transpose(2, 0, 1).copy())[None]
    x = preprocess_batch(pixels, ColourModel())
    assert x.shape == (1, 3, 8, 8)
    levels = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    np.testing.assert_allclose(levels, levels.round(), atol=1e-3)
    # and still the bicubic resize: within a level of a float one
    smooth = F.interpolate(pixels.double(), size=(8, 8), mode="bicubic", antialias=True)
    assert (levels.double() - smooth.clamp(0, 255)).abs().max() <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_resize_is_a_clamped_float_bicubic() -> None:
    """On a GPU: float bicubic with antialiasing, half-pixel centres, clamped to [0, 1]."""
    board = ((np.indices((4, 4)).sum(axis=0) % 2) * 255).astype(np.uint8)
    pixels = torch.from_numpy(np.repeat(board[None, None], 3, axis=1))
    x = preprocess_batch(pixels.cuda(), ColourModel()).cpu().double()
    # The checkerboard's bicubic overshoots [0, 1]: the clamp shows.
    expected = F.interpolate(
        pixels.double() / 255, size=(8, 8), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0, 1)
    expected = (expected - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    np.testing.assert_allclose(x, expected, atol=1e-4)


def test_windows_are_moved_to_the_models_device_and_prepared_there() -> None:
    """Pixels travel to the model's device (here the shape-only meta device) before preprocessing."""
    model = ColourModel(device="meta")
    windows = np.array([[0, 0, 16, 16], [16, 0, 16, 16]])
    kept, embeddings = encode_windows(model, ArraySource(_image()), windows, batch_size=4)
    assert model.seen == [("meta", torch.float32, (2, 3, 8, 8))]
    assert kept.tolist() == [0, 1] and embeddings.shape == (2, 3)


def test_fast_path_is_the_default() -> None:
    """Without ``reference`` the device resize runs, not the model's PIL preprocessing."""
    image, windows = _image(), _grid8()
    kept, embeddings = encode_windows(ColourModel(), ArraySource(image), windows)
    assert kept.tolist() == list(range(8))
    np.testing.assert_allclose(embeddings, _expected_colours(image, windows), atol=1e-5)


@pytest.mark.parametrize(
    "error",
    [
        "MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)",
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 2147483648 bytes",
    ],
)
def test_out_of_memory_messages_halve_the_batch(error: str) -> None:
    """MPS and CPU allocator failures (plain RuntimeErrors) halve the batch; results are right."""
    image, windows = _image(), _grid8()
    model = ColourModel(limit=2, error=error)
    kept, embeddings = encode_windows(model, ArraySource(image), windows, batch_size=8)
    assert max(shape[0] for _, _, shape in model.seen) == 2
    assert kept.tolist() == list(range(8))
    np.testing.assert_allclose(embeddings, _expected_colours(image, windows), atol=1e-5)


def test_other_runtime_errors_are_not_retried() -> None:
    """A RuntimeError that is not out-of-memory is raised, not hidden by smaller batches."""
    model = ColourModel(limit=1, error="mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        encode_windows(model, ArraySource(_image()), _grid8(), batch_size=4)


def test_num_workers_default_by_device(monkeypatch) -> None:
    """Documented default readers: 2 on a GPU (with pinned memory), 0 on the CPU."""
    made: list[dict] = []

    class Stop(Exception):
        pass

    def loader(dataset, **kwargs):
        made.append(kwargs)
        raise Stop

    monkeypatch.setattr(encode, "DataLoader", loader)
    for device in ("cuda", "cpu"):
        with pytest.raises(Stop):
            encode_windows(
                ColourModel(device=device), ArraySource(_image()), _grid8(), batch_size=4
            )
    assert [(k["num_workers"], k["pin_memory"]) for k in made] == [(2, True), (0, False)]


def test_cancel_message_before_and_after_the_last_batch() -> None:
    """Cancelled says "encoding cancelled", whether set before a batch or during the last one."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled) as caught:
        encode_windows(ColourModel(), ArraySource(_image()), _grid8(), cancel=cancel)
    assert str(caught.value) == "encoding cancelled"

    late = threading.Event()
    seen: list[tuple[float, str]] = []

    def progress(fraction: float, message: str) -> None:
        seen.append((fraction, message))
        if fraction == 1.0:
            late.set()

    with pytest.raises(Cancelled) as caught:
        encode_windows(
            ColourModel(), ArraySource(_image()), _grid8(), batch_size=4, progress=progress,
            cancel=late,
        )  # fmt: skip
    assert str(caught.value) == "encoding cancelled"
    assert seen == [(0.5, "encoded 4/8 windows"), (1.0, "encoded 8/8 windows")]


class _Nodata(ArraySource):
    def read(self, window):
        rgb, valid = super().read(window)
        return rgb, np.zeros_like(valid)


def test_no_valid_window_gives_empty_typed_arrays() -> None:
    """When every window is nodata: no indexes (int64) and no embeddings (float32)."""
    kept, embeddings = encode_windows(ColourModel(), _Nodata(_image()), _grid8())
    assert kept.dtype == np.int64 and kept.shape == (0,)
    assert embeddings.dtype == np.float32 and embeddings.shape == (0, 0)
