"""The benchmark datasets of each evaluation task, built by name from a root folder.

Retrieval reads the caption datasets of :mod:`dgtrs_geo.datasets`; zero-shot classification uses
TorchGeo's own EuroSAT (its RGB bands), RESISC45 and UCMerced, and any class-per-folder image
tree (AID) through TorchGeo's ``NonGeoClassificationDataset``; SeLo reads :class:`AIRSLT`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from torch.utils.data import ConcatDataset, Dataset, Subset

from ..errors import InputError

RETRIEVAL_DATASETS: tuple[str, ...] = (
    "RSITMD",
    "RSICD",
    "UCMCaptions",
    "DGTRSD",
    "SyntheticScenes",
)
ZEROSHOT_DATASETS: tuple[str, ...] = ("EuroSAT", "RESISC45", "UCMerced", "AID", "ImageFolder")
SELO_DATASETS: tuple[str, ...] = ("AIRSLT",)
TASKS: dict[str, tuple[str, ...]] = {
    "retrieval": RETRIEVAL_DATASETS,
    "zeroshot": ZEROSHOT_DATASETS,
    "selo": SELO_DATASETS,
}

# EuroSAT holds Sentinel-2 L1C digital numbers (reflectance x 10000): 3000 (reflectance 0.3)
# maps to white, close to how the EuroSAT RGB JPEG release looks.
EUROSAT_WHITE = 3000.0


@dataclass
class BenchmarkData:
    """A dataset ready for one task.

    Attributes:
        name: the dataset's name (``"RSITMD"``, ``"EuroSAT"``, ...).
        task: ``"retrieval"``, ``"zeroshot"`` or ``"selo"``.
        dataset: the samples (TorchGeo-style dicts with ``image`` float [3, H, W]).
        key: what identifies these samples in caches (name, root, split, size).
        classnames: class names as read in prompts (zero-shot only).
        pixel_scale: factor taking the dataset's pixel values to 0..255.

    """

    name: str
    task: str
    dataset: Dataset[dict[str, Any]]
    key: str
    classnames: list[str] | None = None
    pixel_scale: float = 1.0


def task_of(name: str) -> str:
    """Return the task a dataset name belongs to.

    Args:
        name: a dataset name (case-insensitive).

    Returns:
        ``"retrieval"``, ``"zeroshot"`` or ``"selo"``.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    """
    for task, names in TASKS.items():
        if canonical_name(name) in names:
            return task
    known = ", ".join(n for names in TASKS.values() for n in names)
    raise InputError(f"unknown dataset {name!r}; known datasets: {known}")


def canonical_name(name: str) -> str:
    """Return the registered spelling of a dataset name (``"eurosat"`` -> ``"EuroSAT"``)."""
    for names in TASKS.values():
        for known in names:
            if known.lower() == name.lower():
                return known
    return name


def _limited(dataset: Dataset[dict[str, Any]], limit: int | None) -> Dataset[dict[str, Any]]:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def _splits(split: str, available: tuple[str, ...]) -> tuple[str, ...]:
    if split == "all":
        return available
    if split not in available:
        raise InputError(f"unknown split {split!r}; expected 'all' or one of {available}")
    return (split,)


def load_benchmark(
    name: str,
    root: str,
    split: str | None = None,
    limit: int | None = None,
    synthetic_length: int = 500,
) -> BenchmarkData:
    """Build a benchmark dataset by name.

    Args:
        name: one of :data:`RETRIEVAL_DATASETS`, :data:`ZEROSHOT_DATASETS` or
            :data:`SELO_DATASETS` (case-insensitive).
        root: the dataset's root folder (as each dataset class documents it; ignored by
            ``SyntheticScenes``, which draws its scenes).
        split: retrieval datasets default to ``"test"``; classification defaults to ``"all"``
            (every split: the protocol scores the whole dataset); AIR-SLT has no splits.
        limit: keep only the first ``limit`` samples (quick checks; not the protocol).
        synthetic_length: scenes in the ``SyntheticScenes`` split.

    Returns:
        The dataset with what its task needs.

    Raises:
        ValueError: for an unknown name or split.
        DatasetNotFoundError: if the files are not under ``root``.

    """
    from dgtrs_geo import datasets

    name = canonical_name(name)
    task = task_of(name)
    classnames = None
    scale = 1.0
    match name:
        case "RSITMD" | "RSICD" | "UCMCaptions" | "DGTRSD":
            split = split or "test"
            dataset: Dataset[dict[str, Any]] = getattr(datasets, name)(root=root, split=split)
        case "SyntheticScenes":
            split = split or "test"
            dataset = datasets.SyntheticScenes(split=split, length=synthetic_length)
            root = ""
        case "EuroSAT" | "RESISC45" | "UCMerced":
            from torchgeo import datasets as tg

            split = split or "all"
            cls = getattr(tg, name)
            kwargs = {"bands": tg.EuroSAT.rgb_bands} if name == "EuroSAT" else {}
            parts = [cls(root=root, split=s, **kwargs) for s in _splits(split, cls.splits)]
            dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
            classnames = list(parts[0].classes)
            scale = 255.0 / EUROSAT_WHITE if name == "EuroSAT" else 1.0
        case "AID" | "ImageFolder":
            dataset = _image_folder(root)
            split = "all"
            classnames = list(dataset.classes)  # type: ignore[attr-defined]
        case "AIRSLT":
            dataset = datasets.AIRSLT(root=root)
            split = "all"
    dataset = _limited(dataset, limit)
    from .zeroshot import class_name

    return BenchmarkData(
        name=name,
        task=task,
        dataset=dataset,
        key=f"{name}|{os.path.abspath(root) if root else ''}|{split}|{len(dataset)}",  # type: ignore[arg-type]
        classnames=[class_name(c) for c in classnames] if classnames is not None else None,
        pixel_scale=scale,
    )


def _image_folder(root: str) -> Dataset[dict[str, Any]]:
    from torchgeo.datasets import DatasetNotFoundError, NonGeoClassificationDataset

    if not os.path.isdir(root):
        # TorchGeo's message names the root; the note says what layout is expected.
        error = DatasetNotFoundError(SimpleNamespace(root=root))  # type: ignore[arg-type]
        error.add_note("AID and ImageFolder datasets need one sub-folder of images per class")
        raise error
    try:
        return NonGeoClassificationDataset(root=root)
    except FileNotFoundError as error:  # torchvision's: no class folder, or one without images
        raise InputError(
            f"{error} AID and ImageFolder datasets need one sub-folder of images per class"
        ) from error


def _folder(parent: str, name: str) -> str | None:
    for candidate in (name, name.lower()):
        path = os.path.join(parent, candidate)
        if os.path.isdir(path):
            return path
    return None


def resolve_benchmarks(
    task: str,
    names: Sequence[str],
    roots: Sequence[str],
    split: str | None = None,
    limit: int | None = None,
    synthetic_length: int = 500,
) -> list[BenchmarkData]:
    """Build the datasets a command line names, pairing names with root folders.

    With one root per name, they pair in order. With one root and several names (or none),
    each dataset lives in ``ROOT/<NAME>`` (or its lower-case spelling); with no name, every
    known dataset of ``task`` found there is used. ``SyntheticScenes`` needs no root.

    Args:
        task: ``"retrieval"``, ``"zeroshot"``, ``"selo"`` or ``"all"``.
        names: dataset names (may be empty).
        roots: root folders (may be empty when only ``SyntheticScenes`` is named).
        split: split override (see :func:`load_benchmark`).
        limit: keep only the first ``limit`` samples of each dataset.
        synthetic_length: scenes in the ``SyntheticScenes`` split.

    Returns:
        The datasets, in the order named (or the published column order).

    Raises:
        ValueError: if a name does not belong to ``task``, or names and roots do not pair up.
        DatasetNotFoundError: if a dataset's files are missing.

    """
    if task != "all" and task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {[*TASKS, 'all']}")
    names = [canonical_name(n) for n in names]
    for name in names:
        if task != "all" and task_of(name) != task:
            raise InputError(f"{name} is a {task_of(name)} dataset, not a {task} one")
    discovered = not names
    if discovered:
        if len(roots) != 1:
            raise InputError("name the datasets with --dataset, or give one --root holding them")
        wanted = [n for t, ns in TASKS.items() if task in (t, "all") for n in ns]
        names = [n for n in wanted if _folder(roots[0], n) is not None]
        if not names:
            raise InputError(f"no dataset folder ({', '.join(wanted)}) found in {roots[0]!r}")
    paired: list[tuple[str, str]]
    # Names found in the one root live in its sub-folders, even when there is only one.
    if len(roots) == len(names) and not discovered:
        paired = list(zip(names, roots, strict=True))
    elif len(roots) == 1:
        paired = [(n, _folder(roots[0], n) or os.path.join(roots[0], n)) for n in names]
    elif not roots and all(n == "SyntheticScenes" for n in names):
        paired = [(n, "") for n in names]
    else:
        raise InputError(
            f"{len(names)} datasets but {len(roots)} roots: give one --root per --dataset, "
            "or a single --root holding a folder per dataset"
        )
    return [load_benchmark(n, r, split, limit, synthetic_length) for n, r in paired]
