"""Encoding raster windows into image embeddings.

A DataLoader reads windows (in worker processes when asked, so reading overlaps encoding),
batches hold windows of one shape, uint8 pixels travel to the device and are resized there, and
the model's ``encode_image`` runs (under its own autocast on GPU). The batch is halved whenever
the device runs out of memory, and the run goes on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..protocols import ImageTextModel, WindowModel, WindowSource
from .errors import Cancelled

__all__ = ["WindowDataset", "encode_windows", "preprocess_batch"]

#: Progress callback: fraction done in [0, 1] and a message.
ProgressFn = Callable[[float, str], None]

# Side every crop is resized to before the model's own preprocessing in the published recipe.
REFERENCE_CROP_SIZE = 256

# GPU memory one window may take: a 768 px uint8 window, its float copy and resize, and a
# ViT-B/16 forward at 224 px, with room to spare; larger models rely on out-of-memory halving.
GPU_BYTES_PER_WINDOW = 48 * 2**20

# GDAL's block cache while encoding. Its default (5 % of RAM) lets memory grow with the raster;
# windows are read row by row, so a few rows of the largest window are all the cache reuses.
GDAL_CACHE_BYTES = 256 * 2**20


class WindowDataset(Dataset[tuple[int, torch.Tensor, float]]):
    """Windows of a source as tensors.

    Args:
        source: a :class:`~dgtrs_geo.localization.raster.RasterSource` or ``ArraySource``.
        windows: ``[N, 4]`` pixel windows.
        preprocess: ``None`` for the fast path (uint8 ``[3, h, w]``, resized on the device), or
            the model's PIL preprocessing for the reference path (each crop resized to 256 x 256
            bicubic first, then ``preprocess``), which yields float ``[3, S, S]``.

    """

    def __init__(
        self,
        source: WindowSource,
        windows: np.ndarray[Any, Any],
        preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self.source = source
        self.windows = np.asarray(windows)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, float]:
        rgb, valid = self.source.read(self.windows[i])
        fraction = float(valid.mean())
        if self.preprocess is None:
            return i, torch.from_numpy(rgb), fraction
        crop = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
        crop = crop.resize((REFERENCE_CROP_SIZE, REFERENCE_CROP_SIZE), Image.Resampling.BICUBIC)
        return i, self.preprocess(crop), fraction


class _ShapeBatchSampler(Sampler[list[int]]):
    """Consecutive indexes in batches that never mix window shapes (so they stack)."""

    def __init__(self, windows: np.ndarray[Any, Any], batch_size: int) -> None:
        self.windows = windows
        self.batch_size = batch_size

    def _batches(self) -> list[list[int]]:
        batches: list[list[int]] = []
        start = 0
        n = len(self.windows)
        while start < n:
            shape = tuple(self.windows[start, 2:])
            stop = start
            while (
                stop < n
                and stop - start < self.batch_size
                and tuple(self.windows[stop, 2:]) == shape
            ):
                stop += 1
            batches.append(list(range(start, stop)))
            start = stop
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def preprocess_batch(pixels: torch.Tensor, model: WindowModel) -> torch.Tensor:
    """Turn a uint8 batch ``[B, 3, h, w]`` into the model's normalised input ``[B, 3, S, S]``.

    Bicubic with antialiasing, like the PIL resize of the model's own preprocessing; windows are
    square except on rasters smaller than a window, which are resized whole rather than cropped.

    Args:
        pixels: uint8 tensor on the target device.
        model: a loaded model (``image_size``, ``mean``, ``std``).

    Returns:
        float32 tensor.

    """
    size = int(model.image_size)
    if pixels.shape[-2:] == (size, size):
        x = pixels.float().div_(255.0)
    elif pixels.device.type == "cpu":
        # torch resizes uint8 on the CPU directly: ten times faster and a quarter of the memory
        # of float. Shrinking (the usual case) stays within a level of float's result;
        # enlarging a small window differs by up to ~15 levels at sharp edges (measured).
        x = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
        x = x.float().div_(255.0)
    else:
        x = pixels.float().div_(255.0)
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    mean = torch.tensor(model.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("out of memory" in str(error) or "can't allocate memory" in str(error))
    )


def default_batch_size(device: torch.device) -> int:
    """Return the starting batch size for ``device``; out-of-memory halving adapts it from there.

    On CUDA: the largest power of two of windows that fits the free memory at
    :data:`GPU_BYTES_PER_WINDOW` each, between 16 and 1024. On CPU: 32, which already keeps
    every core busy.
    """
    if device.type != "cuda":
        return 32
    free, _ = torch.cuda.mem_get_info(device)
    fits = max(1, free // GPU_BYTES_PER_WINDOW)
    return int(min(1024, max(16, 2 ** int(math.log2(fits)))))


def encode_windows(
    model: WindowModel,
    source: WindowSource,
    windows: np.ndarray[Any, Any],
    *,
    reference: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    min_valid: float = 0.5,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Embed every window of ``source`` that is at least ``min_valid`` valid pixels.

    Args:
        model: a loaded model (see :func:`dgtrs_geo.load_model`).
        source: a raster or array source.
        windows: ``[N, 4]`` pixel windows, sorted so equal shapes are consecutive.
        reference: use the published recipe's crop preprocessing (PIL, 256 px, then the model's
            preprocess) instead of the device resize.
        batch_size: windows per forward; ``None`` picks one for the device. Halved on OOM.
        num_workers: DataLoader reader processes; ``None``: 2 on GPU, 0 on CPU (where the
            encoder already uses every core).
        min_valid: windows with a smaller fraction of valid (not nodata) pixels are skipped.
        progress: called with ``(fraction, message)`` after each batch.
        cancel: checked between batches; when set, :class:`Cancelled` is raised.

    Returns:
        ``(kept, embeddings)``: int64 indexes into ``windows`` of the embedded windows, and
        float32 ``[len(kept), D]`` L2-normalised embeddings.

    Raises:
        Cancelled: if ``cancel`` was set.
        RuntimeError: if even a batch of one does not fit in memory.

    """
    device = torch.device(model.device)
    batch_size = batch_size or default_batch_size(device)
    if num_workers is None:
        num_workers = 2 if device.type == "cuda" else 0
    dataset = WindowDataset(source, windows, preprocess=model.preprocess if reference else None)
    loader = DataLoader(
        dataset,
        batch_sampler=_ShapeBatchSampler(np.asarray(windows), batch_size),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        kept, chunks = _encode_loader(
            model, loader, batch_size, reference, min_valid, progress, cancel
        )
    if not kept:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(kept).astype(np.int64), np.concatenate(chunks).astype(np.float32)


def _encode_loader(
    model: WindowModel,
    loader: DataLoader[tuple[int, torch.Tensor, float]],
    batch_size: int,
    reference: bool,
    min_valid: float,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> tuple[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]]:
    device = torch.device(model.device)
    kept: list[np.ndarray[Any, Any]] = []
    chunks: list[np.ndarray[Any, Any]] = []
    chunk = batch_size
    done = 0
    total = len(loader.dataset)  # type: ignore[arg-type]  # a WindowDataset has a length
    for indexes, pixels, fractions in loader:
        if cancel is not None and cancel.is_set():
            raise Cancelled("encoding cancelled")
        keep = fractions >= min_valid
        if keep.any():
            # Boolean indexing copies the batch: only pay for it when windows are dropped.
            pixels = (pixels if keep.all() else pixels[keep]).to(device, non_blocking=True)
            embeddings, chunk = _encode_adaptive(model, pixels, chunk, reference)
            kept.append(indexes[keep].numpy())
            chunks.append(embeddings)
        done += len(indexes)
        if progress is not None:
            progress(done / total, f"encoded {done}/{total} windows")
    if cancel is not None and cancel.is_set():
        raise Cancelled("encoding cancelled")
    return kept, chunks


def _encode_adaptive(
    model: WindowModel, pixels: torch.Tensor, chunk: int, reference: bool
) -> tuple[np.ndarray[Any, Any], int]:
    """Encode ``pixels`` in chunks, halving the chunk on OOM; return embeddings and the chunk."""
    device = pixels.device
    out: list[np.ndarray[Any, Any]] = []
    start = 0
    while start < len(pixels):
        part = pixels[start : start + chunk]
        try:
            with torch.inference_mode():
                # The model runs its own autocast on GPU; resizing stays in float32.
                x = part.float() if reference else preprocess_batch(part, model)
                out.append(model.encode_image(x).float().cpu().numpy())
        except RuntimeError as error:
            if not _is_oom(error) or chunk == 1:
                raise
            chunk //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start += len(part)
    return np.concatenate(out), chunk


def encode_texts(model: ImageTextModel, queries: Sequence[str]) -> np.ndarray[Any, Any]:
    """Embed queries with one text forward; return float32 ``[Q, D]`` L2-normalised."""
    with torch.inference_mode():
        embedded: np.ndarray[Any, Any] = model.encode_text(list(queries)).float().cpu().numpy()
    return embedded
