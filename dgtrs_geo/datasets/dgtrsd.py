"""DGTRSD: image-caption pairs from a manifest (JSONL, CSV or ShareGPT4V JSON).

The DGTRS paper's training set is unreleased, so the project defines a manifest
format (docs/datasets.md) that its captioning tools write and that users fill
with their own pairs. Long-CLIP's ShareGPT4V JSON layout is read as well.
"""

import csv
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset
from torchgeo.datasets.utils import Path

from ..errors import InputError
from .utils import (
    CaptionPlotMixin,
    CorruptImageError,
    ManifestError,
    first_sentence,
    is_readable_image,
    load_image,
)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptionRecord:
    """One image with its captions, as read from a manifest."""

    image: str
    caption_short: str
    caption_long: str
    split: str
    where: str


def _records_jsonl(path: str) -> Iterator[tuple[dict[str, Any], str]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}.")
            yield row, where


def _records_csv(path: str) -> Iterator[tuple[dict[str, Any], str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # line_num counts physical lines, so quoted multi-line captions stay right
            yield (
                {k: v for k, v in row.items() if v not in (None, "")},
                (f"{path} line {reader.line_num}"),
            )


def _records_sharegpt4v(path: str) -> Iterator[tuple[dict[str, Any], str]]:
    with open(path, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: a ShareGPT4V file holds a JSON list of entries.")
    for number, entry in enumerate(entries):
        where = f"{path} entry {number}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}.")
        answers = [
            turn.get("value", "")
            for turn in entry.get("conversations", [])
            if turn.get("from") == "gpt"
        ]
        if not answers:
            raise ManifestError(f"{where}: no 'gpt' turn in 'conversations' to use as caption.")
        long = answers[0].strip()
        row = {"image": entry.get("image"), "caption_long": long}
        row["caption_short"] = first_sentence(long)
        if "split" in entry:
            row["split"] = entry["split"]
        yield row, where


def read_manifest(path: Path) -> list[CaptionRecord]:
    """Read and check every entry of a caption manifest.

    The format follows the extension: ``.jsonl`` (one JSON object per line),
    ``.csv`` (header ``image,caption_short,caption_long[,split]``) or ``.json``
    (Long-CLIP's ShareGPT4V list; short caption = first sentence of the answer).
    Image paths are relative to the manifest's folder unless absolute. Entries
    without a split belong to "train". Other keys are ignored.

    Args:
        path: The manifest file.

    Returns:
        One record per entry, image paths made absolute.

    Raises:
        ManifestError: For a malformed entry, an empty caption or an unknown
            split; the message names the file and line (or entry).
        InputError: For an unknown extension (a ``ValueError`` too).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    match os.path.splitext(path)[1].lower():
        case ".jsonl":
            rows = _records_jsonl(path)
        case ".csv":
            rows = _records_csv(path)
        case ".json":
            rows = _records_sharegpt4v(path)
        case other:
            raise InputError(
                f"Unknown manifest extension {other!r} for {path}; use .jsonl, .csv or "
                "a ShareGPT4V .json."
            )
    records = []
    for row, where in rows:
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ManifestError(f"{where}: missing 'image' path.")
        captions = {}
        for key in ("caption_short", "caption_long"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ManifestError(f"{where}: empty or missing '{key}' for image {image!r}.")
            captions[key] = value.strip()
        split = row.get("split", "train")
        if split not in SPLITS:
            raise ManifestError(f"{where}: unknown split {split!r}; expected one of {SPLITS}.")
        records.append(
            CaptionRecord(os.path.join(folder, image), where=where, split=split, **captions)
        )
    return records


class DGTRSD(CaptionPlotMixin, NonGeoDataset):
    """DGTRSD: remote-sensing images with a short caption and a long description.

    Reads a manifest in the project's format (docs/datasets.md): JSONL with one
    object per line, keys ``image`` (relative to the manifest's folder, or
    absolute), ``caption_short``, ``caption_long`` and optional ``split``
    ("train", "val", "test"; default "train"); the same columns as CSV; or
    Long-CLIP's ShareGPT4V JSON. A ``{split}`` in the manifest name selects one
    file per split (``captions_{split}.jsonl``).

    Every image of the split is checked to exist when the dataset is built, so a
    broken manifest fails at once, naming the line.

    Sample keys: ``image`` (float [3, H, W], 0..255), ``caption_short``,
    ``caption_long`` (str).

    The DGTRS paper's own training data is unreleased: there is nothing to
    download.
    """

    splits: ClassVar[tuple[str, ...]] = SPLITS

    def __init__(
        self,
        root: Path = "data",
        split: str = "train",
        manifest: str = "dgtrsd.jsonl",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        """Initialize a new DGTRSD instance.

        Args:
            root: Folder holding the manifest (ignored for an absolute manifest).
            split: One of "train", "val", "test".
            manifest: Manifest file name, relative to *root*; may contain
                ``{split}``.
            transforms: A function/transform that takes a sample and returns a
                transformed version.
            skip_corrupt: If True, decode every image of the split once now and
                leave out the unreadable ones (counted in ``num_skipped``, with a
                warning); if False, a corrupt image raises when it is loaded.

        Raises:
            InputError: If *split* is unknown (a ``ValueError`` too).
            DatasetNotFoundError: If the manifest is not found.
            ManifestError: If an entry is malformed or its image is missing.
        """
        if split not in self.splits:
            raise InputError(f"Unknown split {split!r}; expected one of {self.splits}.")
        self.root = root
        self.split = split
        self.manifest = os.path.join(root, manifest.format(split=split))
        self.transforms = transforms
        self.skip_corrupt = skip_corrupt

        self._verify()

        records = [r for r in read_manifest(self.manifest) if r.split == split]
        for record in records:
            if not os.path.isfile(record.image):
                raise ManifestError(f"{record.where}: image not found: {record.image}")
        if not records:
            raise ManifestError(
                f"{self.manifest} has no entries for split {split!r}; add a 'split' key "
                "to its entries or name one manifest per split with '{split}'."
            )
        self.num_skipped = 0
        if skip_corrupt:
            readable = [r for r in records if is_readable_image(r.image)]
            self.num_skipped = len(records) - len(readable)
            if self.num_skipped:
                warnings.warn(
                    f"Skipped {self.num_skipped} of {len(records)} images of split "
                    f"{split!r} in {self.manifest} that cannot be decoded.",
                    stacklevel=2,
                )
            records = readable
        self.records = records

    def _verify(self) -> None:
        """Verify that the manifest exists.

        Raises:
            DatasetNotFoundError: If it does not.
        """
        if not os.path.isfile(self.manifest):
            raise DatasetNotFoundError(self)

    def __len__(self) -> int:
        """Return the number of image-caption pairs.

        Returns:
            Length of the dataset.
        """
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return an image with its captions.

        Args:
            index: Index to return.

        Returns:
            Sample with ``image``, ``caption_short`` and ``caption_long``.

        Raises:
            CorruptImageError: If the image cannot be decoded (the message names
                the manifest line).
        """
        record = self.records[index]
        try:
            image = load_image(record.image)
        except CorruptImageError as err:
            raise CorruptImageError(f"{record.where}: {err}") from err
        sample: dict[str, Any] = {
            "image": image,
            "caption_short": record.caption_short,
            "caption_long": record.caption_long,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
