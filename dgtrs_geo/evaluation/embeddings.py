"""Embed a benchmark dataset once per model: batched, on the model's device, cached on disk.

The cache file is keyed by the model's ``model_id`` (which fingerprints the weights) and by the
dataset's key (name, root, split, size), so a second evaluation of the same model on the same
data reads the embeddings back instead of running the model.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import OutputError
from .data import BenchmarkData

CACHE_VERSION = 1


def to_pil(image: Tensor, pixel_scale: float = 1.0) -> Image.Image:
    """Turn a TorchGeo image (float ``[3, H, W]``) into an 8-bit RGB PIL image.

    Args:
        image: the image; values times ``pixel_scale`` should span 0..255.
        pixel_scale: factor to 0..255 (``255 / 3000`` for EuroSAT's digital numbers).

    Returns:
        The RGB image, values clipped to 0..255.

    """
    array = (image[:3].float() * pixel_scale).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


class _Prepared(Dataset[dict[str, Any]]):
    """Samples with the image run through the model's own preprocessing."""

    def __init__(self, data: BenchmarkData, preprocess: Any) -> None:
        self.data = data
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.data.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.data.dataset[index]
        out: dict[str, Any] = {
            "pixels": self.preprocess(to_pil(sample["image"], self.data.pixel_scale))
        }
        if "label" in sample:
            out["label"] = int(sample["label"])
        if "captions" in sample:
            # The five-caption sets' "caption_long" only joins those captions: no long retrieval.
            out["short"], out["long"] = list(sample["captions"]), []
        else:
            out["short"] = [sample["caption_short"]] if "caption_short" in sample else []
            out["long"] = [sample["caption_long"]] if "caption_long" in sample else []
        return out


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {"pixels": torch.stack([s["pixels"] for s in samples])}
    if "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples])
    batch["short"] = [s["short"] for s in samples]
    batch["long"] = [s["long"] for s in samples]
    return batch


def cache_path(cache_dir: str | Path, model_id: str, data: BenchmarkData) -> Path:
    """Where the embeddings of ``data`` by model ``model_id`` are cached.

    Args:
        cache_dir: the embeddings cache folder.
        model_id: the model's stable identifier.
        data: the benchmark dataset.

    Returns:
        ``cache_dir/<model_id>/<dataset>-<hash of the dataset key>.pt``.

    """
    digest = hashlib.sha256(f"{CACHE_VERSION}|{data.key}".encode()).hexdigest()[:16]
    return Path(cache_dir) / model_id / f"{data.name}-{digest}.pt"


def _text_embeddings(model: Any, groups: list[list[str]], batch_size: int) -> tuple[Tensor, Tensor]:
    """Embed every caption of every group (callers pass at least one), with its group index."""
    texts = [text for group in groups for text in group]
    owners = torch.tensor([i for i, group in enumerate(groups) for _ in group], dtype=torch.long)
    chunks = [
        model.encode_text(texts[s : s + batch_size]).cpu() for s in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks), owners


def encode_benchmark(
    model: Any,
    data: BenchmarkData,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Embed every image of a dataset (and its captions, for retrieval sets).

    Args:
        model: a loaded model (:func:`dgtrs_geo.load_model`).
        data: the dataset, from :func:`~dgtrs_geo.evaluation.data.load_benchmark`.
        batch_size: images (and texts) per forward pass.
        num_workers: DataLoader worker processes reading and preprocessing images.
        cache_dir: folder of the embeddings cache; ``None`` disables it.
        progress: show a progress bar.

    Returns:
        ``image`` float32 ``[N, D]`` (L2-normalised), and as the dataset has them ``label``
        ``[N]``, ``short`` ``[Ns, D]`` with ``short_to_image`` ``[Ns]``, and ``long`` ``[Nl, D]``
        with ``long_to_image`` ``[Nl]``.

    """
    path = cache_path(cache_dir, model.model_id, data) if cache_dir is not None else None
    if path is not None and path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    loader = DataLoader(
        _Prepared(data, model.preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    images, labels, short, long = [], [], [], []
    for batch in tqdm(loader, desc=f"{data.name} images", disable=not progress, leave=False):
        images.append(model.encode_image(batch["pixels"]).cpu())
        if "label" in batch:
            labels.append(batch["label"])
        short.extend(batch["short"])
        long.extend(batch["long"])
    result: dict[str, Tensor] = {"image": torch.cat(images)}
    if labels:
        result["label"] = torch.cat(labels)
    for name, groups in (("short", short), ("long", long)):
        if any(groups):
            result[name], result[f"{name}_to_image"] = _text_embeddings(model, groups, batch_size)
    if path is not None:
        _atomic_save(result, path)
    return result


def _atomic_save(payload: dict[str, Tensor], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    except OSError as error:
        raise OutputError(
            f"cannot write the embeddings cache {path.parent} ({error.strerror or error}): set "
            "DGTRS_GEO_CACHE to a writable folder, or pass --no-cache"
        ) from error
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
