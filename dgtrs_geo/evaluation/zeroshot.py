"""Zero-shot scene classification with prompt ensembles (docs/protocols.md section 6).

A class's weight is the mean of the *unnormalised* text embeddings of its prompts, then
L2-normalised; logits are ``100 x`` the cosine between image and class weights.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor

from .templates import TEMPLATES, prompts

LOGIT_SCALE = 100.0

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def class_name(folder: str) -> str:
    """Turn a class folder name into words: ``"dense_residential"``/``"DenseResidential"``.

    Underscores and hyphens become spaces and CamelCase is split (AID and EuroSAT name their
    folders in CamelCase), then everything is lower-cased: both examples give
    ``"dense residential"``.

    Args:
        folder: the folder or class name.

    Returns:
        The class name as it reads in a prompt.

    """
    words = _CAMEL.sub(" ", folder).replace("_", " ").replace("-", " ")
    return " ".join(words.lower().split())


@torch.no_grad()
def class_weights(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    batch_size: int = 256,
) -> Tensor:
    """Zero-shot classifier weights: one L2-normalised prompt-ensemble embedding per class.

    Args:
        model: a loaded model (:func:`dgtrs_geo.load_model`); its ``clip.encode_text`` gives
            the unnormalised text embeddings the ensemble averages.
        classnames: class names as they read in a sentence.
        templates: prompt templates with one ``{}`` each.
        batch_size: prompts per forward pass.

    Returns:
        Float32 ``[C, D]`` weights on the CPU, rows of unit length.

    Raises:
        ValueError: if there is no class name or no template.

    """
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    rows = []
    for name in classnames:
        tokens = model.tokenize(prompts(name, tuple(templates)))
        chunks = [
            model.clip.encode_text(tokens[start : start + batch_size].to(model.device)).float()
            for start in range(0, len(tokens), batch_size)
        ]
        rows.append(torch.cat(chunks).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1).cpu()


def zeroshot_logits(image_emb: Tensor, weights: Tensor) -> Tensor:
    """Logits ``100 x cos`` of L2-normalised image embeddings ``[N, D]`` against ``[C, D]``."""
    return LOGIT_SCALE * image_emb.float() @ weights.float().T


def classification_metrics(
    logits: Tensor, labels: Tensor, classnames: Sequence[str]
) -> dict[str, Any]:
    """Top-1 accuracy over all samples, per-class accuracy and the confusion matrix.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` true class indices.
        classnames: the ``C`` class names.

    Returns:
        ``{"top1": float, "per_class": {name: float}, "confusion": [[int]]}``; accuracies are
        percentages, ``confusion[true][predicted]`` counts samples. Classes without samples are
        left out of ``per_class``.

    Raises:
        ValueError: if shapes disagree or a label is out of range.

    """
    labels = torch.as_tensor(labels).long().flatten()
    if logits.ndim != 2 or logits.shape[1] != len(classnames) or logits.shape[0] != len(labels):
        raise ValueError(
            f"logits {tuple(logits.shape)} must be [N, C] with N = {len(labels)} labels and "
            f"C = {len(classnames)} classes"
        )
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(classnames):
        raise ValueError(f"labels must be non-empty class indices in [0, {len(classnames) - 1}]")
    predicted = logits.argmax(dim=1).cpu()
    num_classes = len(classnames)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    support = confusion.sum(dim=1)
    per_class = {
        name: 100.0 * confusion[index, index].item() / support[index].item()
        for index, name in enumerate(classnames)
        if support[index] > 0
    }
    return {
        "top1": 100.0 * (predicted == labels).float().mean().item(),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], classnames: Sequence[str], title: str | None = None
) -> Figure:
    """Draw a row-normalised confusion matrix (true classes as rows).

    Args:
        confusion: ``[C, C]`` counts, ``confusion[true][predicted]``.
        classnames: the class names, in order.
        title: optional figure title.

    Returns:
        A matplotlib Figure.

    """
    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.25 * len(classnames) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classnames))
    ax.set_xticks(ticks, classnames, rotation=90, fontsize=7)
    ax.set_yticks(ticks, classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if title is not None:
        ax.set_title(title)
    fig.tight_layout()
    return fig
