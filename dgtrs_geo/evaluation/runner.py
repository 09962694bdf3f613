"""Run the evaluation tasks for several models on several benchmark datasets.

Models are loaded one at a time and evaluated on every dataset before the next is loaded, so
only one model is in memory; dataset embeddings are cached per model (see
:mod:`~dgtrs_geo.evaluation.embeddings`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..errors import DgtrsGeoError, InputError, ModelError

if TYPE_CHECKING:
    from ..datasets.airslt import AIRSLT
from .data import BenchmarkData
from .embeddings import encode_benchmark
from .report import plot_selo_maps, safe_file_name, save_figure
from .retrieval import retrieval_recalls
from .selo import RMI_WEIGHTS, selo_metrics
from .templates import TEMPLATES
from .zeroshot import class_weights, classification_metrics, zeroshot_logits

SELO_METRICS = ("rsu", "rda", "ras", "rmi")
SELO_MODES = ("reference", "fast")


@dataclass
class EvaluationSettings:
    """How to run the evaluation (not what it measures).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ... or ``"auto"`` (CUDA when available).
        batch_size: images or texts per forward pass.
        num_workers: DataLoader workers reading images.
        cache_dir: embeddings cache folder; ``None`` disables the cache.
        progress: show progress bars.
        templates: zero-shot prompt templates.
        selo_scales: SeLo window sizes in pixels (the protocol's 256, 512, 768 by default).
        selo_modes: probability-map modes to score: ``"reference"`` (the published recipe) and/or
            ``"fast"`` (the product's default).
        jpeg_roundtrip: reproduce the authors' JPEG save and re-read of reference maps.
        figures_dir: where SeLo map figures go (``None``: none are drawn).
        selo_figures: how many of the first SeLo queries get a figure of their maps.

    """

    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 0
    cache_dir: str | Path | None = None
    progress: bool = True
    templates: Sequence[str] = TEMPLATES
    selo_scales: Sequence[int] = (256, 512, 768)
    selo_modes: Sequence[str] = SELO_MODES
    jpeg_roundtrip: bool = False
    figures_dir: str | Path | None = None
    selo_figures: int = 3


def evaluate_retrieval(
    model: Any, data: BenchmarkData, settings: EvaluationSettings
) -> dict[str, dict[str, float]]:
    """Short- (and, where the dataset has them, long-) caption retrieval recalls.

    Args:
        model: a loaded model.
        data: a retrieval dataset.
        settings: how to run.

    Returns:
        ``{"short": recalls}`` and ``{"long": recalls}`` when there are long captions; recalls
        as :func:`~dgtrs_geo.evaluation.retrieval.retrieval_recalls` returns them.

    Raises:
        InputError: if the dataset has no captions.

    """
    emb = _encode(model, data, settings)
    result: dict[str, dict[str, float]] = {}
    for granularity in ("short", "long"):
        if granularity in emb:
            result[granularity] = retrieval_recalls(
                emb["image"], emb[granularity], emb[f"{granularity}_to_image"]
            )
    if not result:
        raise InputError(f"{data.name} gave no captions: is it a caption dataset?")
    return result


def evaluate_zeroshot(
    model: Any, data: BenchmarkData, settings: EvaluationSettings
) -> dict[str, Any]:
    """Zero-shot top-1, per-class accuracy and confusion matrix on a classification dataset.

    Args:
        model: a loaded model.
        data: a classification dataset (with ``classnames``).
        settings: how to run (``templates`` are the prompts).

    Returns:
        ``{"top1", "per_class", "confusion", "classnames"}``.

    Raises:
        InputError: if the dataset has no class names.

    """
    if not data.classnames:
        raise InputError(f"{data.name} has no class names: is it a classification dataset?")
    emb = _encode(model, data, settings)
    weights = class_weights(model, data.classnames, settings.templates, settings.batch_size)
    metrics = classification_metrics(
        zeroshot_logits(emb["image"], weights), emb["label"], data.classnames
    )
    metrics["classnames"] = list(data.classnames)
    return metrics


def _map_functions(modes: Sequence[str]) -> dict[str, Callable[..., np.ndarray]]:
    try:
        from dgtrs_geo.localization.reference import fast_probability_map, reference_probability_map
    except ImportError as error:
        raise RuntimeError(
            f"SeLo needs dgtrs_geo.localization.reference, which failed to import: {error}"
        ) from error
    functions = {"reference": reference_probability_map, "fast": fast_probability_map}
    unknown = sorted(set(modes) - set(functions))
    if unknown or not modes:
        raise InputError(f"SeLo modes must be among {sorted(functions)}, got {list(modes)}")
    return {mode: functions[mode] for mode in modes}


def evaluate_selo(
    model: Any, data: BenchmarkData, settings: EvaluationSettings, label: str = ""
) -> dict[str, Any]:
    """SeLo metrics of every query, per map mode, with the time each map took.

    Args:
        model: a loaded model.
        data: an AIR-SLT dataset.
        settings: how to run (``selo_scales``, ``selo_modes``, ``jpeg_roundtrip``, figures).
        label: the model's name in figure file names (default: its ``model_id``).

    Returns:
        Per mode: ``{"mean": {rsu, rda, ras, rmi}, "seconds_per_query": float, "samples": [rows]}``,
        each row ``{index, jpg_name, caption, rsu, rda, ras, rmi, seconds}``.

    """
    functions = _map_functions(settings.selo_modes)
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in functions}
    # Read AIR-SLT's large images as uint8 straight from the files (--limit wraps them in a Subset).
    dataset = data.dataset
    indices = list(dataset.indices) if isinstance(dataset, Subset) else range(len(dataset))  # type: ignore[arg-type]
    # The one SeLo dataset (data.SELO_DATASETS).
    airslt = cast("AIRSLT", dataset.dataset if isinstance(dataset, Subset) else dataset)
    progress = tqdm(
        indices, desc=f"{data.name} queries", disable=not settings.progress, leave=False
    )
    for position, index in enumerate(progress):
        entry = airslt.entries[index]
        image = airslt.image_array(index)
        maps: dict[str, np.ndarray] = {}
        for mode, function in functions.items():
            kwargs = {"jpeg_roundtrip": settings.jpeg_roundtrip} if mode == "reference" else {}
            start = time.perf_counter()
            prob_map = function(
                image, entry["caption"], model, tuple(settings.selo_scales), **kwargs
            )
            seconds = time.perf_counter() - start
            maps[mode] = prob_map
            metrics = selo_metrics(prob_map, entry["polygons"])
            rows[mode].append(
                {
                    "index": index,
                    "jpg_name": entry["jpg_name"],
                    "caption": entry["caption"],
                    **{name: metrics[name] for name in SELO_METRICS},
                    "seconds": seconds,
                }
            )
        if settings.figures_dir is not None and position < settings.selo_figures:
            name = f"selo-{data.name}-{label or model.model_id}-{index:03d}.png"
            figure = plot_selo_maps(image, maps, entry["polygons"], entry["caption"])
            save_figure(figure, Path(settings.figures_dir) / safe_file_name(name))
    return {
        mode: {
            "mean": {name: float(np.mean([r[name] for r in mode_rows])) for name in SELO_METRICS},
            "seconds_per_query": float(np.mean([r["seconds"] for r in mode_rows])),
            "samples": mode_rows,
        }
        for mode, mode_rows in rows.items()
    }


def _encode(model: Any, data: BenchmarkData, settings: EvaluationSettings) -> dict[str, Any]:
    return encode_benchmark(
        model,
        data,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        cache_dir=settings.cache_dir,
        progress=settings.progress,
    )


_TASKS: dict[str, Callable[[Any, BenchmarkData, EvaluationSettings], Any]] = {
    "retrieval": evaluate_retrieval,
    "zeroshot": evaluate_zeroshot,
}


def model_label(source: str) -> str:
    """Name a model in reports: its registry name, or its checkpoint file's stem."""
    path = Path(source)
    return path.stem if path.suffix else source


def load_for_evaluation(source: str, device: str) -> Any:
    """Load a model, naming it in any error.

    Args:
        source: registry name or checkpoint path.
        device: where to run it.

    Returns:
        The loaded model.

    Raises:
        ModelError: if it cannot be loaded (missing or broken file, no weights offline, a device
            this machine lacks); the message names the model and the cause. Any other failure
            is a bug and propagates as it is.

    """
    import dgtrs_geo

    try:
        return dgtrs_geo.load_model(source, device=device)
    except DgtrsGeoError as error:  # reported with the model it concerns
        raise ModelError(f"cannot load model {source!r}: {error}") from error


def run_evaluation(
    models: Sequence[str], benchmarks: Sequence[BenchmarkData], settings: EvaluationSettings
) -> dict[str, Any]:
    """Evaluate every model on every benchmark dataset.

    Args:
        models: registry names or checkpoint paths.
        benchmarks: datasets from :func:`~dgtrs_geo.evaluation.data.load_benchmark`.
        settings: how to run.

    Returns:
        ``{"models": [label], "datasets": [{"name", "task"}], "results": {label: {dataset:
        result}}, "model_ids": {label: model_id}, "rmi_weights": {...}}``.

    Raises:
        InputError: if there is no model or dataset, or two models share a label.
        ModelError: if a model cannot be loaded.

    """
    if not models or not benchmarks:
        raise InputError("evaluation needs at least one --model and one --dataset")
    labels = [model_label(m) for m in models]
    if len(set(labels)) != len(labels):
        raise InputError(f"two models would share a row name in the report: {labels}")
    results: dict[str, dict[str, Any]] = {}
    model_ids = {}
    for source, label in zip(models, labels, strict=True):
        model = load_for_evaluation(source, settings.device)
        model_ids[label] = model.model_id
        results[label] = {}
        for data in benchmarks:
            if data.task == "selo":
                results[label][data.name] = evaluate_selo(model, data, settings, label=label)
            else:
                results[label][data.name] = _TASKS[data.task](model, data, settings)
        del model
    return {
        "models": labels,
        "model_ids": model_ids,
        "datasets": [{"name": d.name, "task": d.task} for d in benchmarks],
        "results": results,
        "rmi_weights": RMI_WEIGHTS,
    }
