"""RSITMD, RSICD and UCM-Captions: the retrieval benchmarks' public layout.

Each is distributed as one JSON file (``images[]`` with ``filename``, ``split``
and ``sentences[].raw``, five captions per image) next to an image folder.
"""

import json
import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset
from torchgeo.datasets.utils import Path, check_integrity, download_url, extract_archive

from ..errors import InputError
from .utils import CaptionPlotMixin, ManifestError, is_readable_image, load_image


class RSCaptionDataset(CaptionPlotMixin, NonGeoDataset):
    """Base class of the five-captions-per-image retrieval datasets.

    Sample keys: ``image`` (float [3, H, W], 0..255), ``captions`` (list of str),
    ``caption_short`` (the first caption) and ``caption_long`` (all captions
    joined, so these sets can also feed the dual-granularity loss).

    For retrieval over every caption, :attr:`all_captions` lists the captions of
    the split flat and :attr:`caption_to_image` gives each one's image index.

    Subclasses set the layout: ``filename`` (the JSON), ``image_dir``, ``splits``,
    and ``url`` / ``md5`` of an archive holding both where one is public.
    """

    #: JSON annotation file name, relative to ``root``.
    filename: ClassVar[str]
    #: Image folder, relative to ``root``.
    image_dir: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: Archive with the JSON and the image folder; None where no direct link is public.
    url: ClassVar[str | None] = None
    md5: ClassVar[str | None] = None
    #: Where to get the data by hand.
    source: ClassVar[str]
    # The five captions already include caption_short and make up caption_long
    plot_keys: ClassVar[tuple[str, ...]] = ("captions",)

    def __init__(
        self,
        root: Path = "data",
        split: str = "train",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        download: bool = False,
        checksum: bool = False,
        skip_corrupt: bool = False,
    ) -> None:
        """Initialize a new dataset instance.

        Args:
            root: Root directory where the dataset can be found.
            split: One of :attr:`splits`.
            transforms: A function/transform that takes a sample and returns a
                transformed version.
            download: If True, download the archive at :attr:`url` into *root*.
            checksum: If True, check the MD5 of the downloaded archive.
            skip_corrupt: If True, decode every image of the split once now and
                leave out unreadable ones (counted in ``num_skipped``); if False a
                corrupt image raises when it is loaded.

        Raises:
            InputError: If *split* is unknown (a ``ValueError`` too).
            DatasetNotFoundError: If the dataset is not found and cannot be
                downloaded.
            ManifestError: If the annotation file is not Karpathy-style JSON, an entry
                has no captions or its image is missing.
        """
        if split not in self.splits:
            raise InputError(f"Unknown split {split!r}; expected one of {self.splits}.")
        self.root = root
        self.split = split
        self.transforms = transforms
        self.download = download
        self.checksum = checksum

        self._verify()

        path = os.path.join(root, self.filename)
        with open(path, encoding="utf-8") as f:
            try:
                entries = json.load(f)["images"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ManifestError(
                    f"{path} is not a Karpathy-style caption file (a JSON object with an "
                    f"'images' list): {err}"
                ) from err
        self.files: list[str] = []
        self.captions: list[list[str]] = []
        for number, entry in enumerate(entries):
            if entry.get("split") != split:
                continue
            where = f"{path} images[{number}] ({entry.get('filename')!r})"
            captions = [s.get("raw", "").strip() for s in entry.get("sentences", [])]
            if not captions or not all(captions):
                raise ManifestError(f"{where}: empty caption in 'sentences'.")
            file = os.path.join(root, self.image_dir, entry["filename"])
            if not os.path.isfile(file):
                raise ManifestError(f"{where}: image not found: {file}")
            self.files.append(file)
            self.captions.append(captions)
        if not self.files:
            raise ManifestError(f"{path} has no images in split {split!r}.")

        self.num_skipped = 0
        if skip_corrupt:
            keep = [i for i, f in enumerate(self.files) if is_readable_image(f)]
            self.num_skipped = len(self.files) - len(keep)
            if self.num_skipped:
                warnings.warn(
                    f"Skipped {self.num_skipped} of {len(self.files)} images of split "
                    f"{split!r} in {path} that cannot be decoded.",
                    stacklevel=2,
                )
            self.files = [self.files[i] for i in keep]
            self.captions = [self.captions[i] for i in keep]

    def _verify(self) -> None:
        """Find the dataset, extract or download it, or raise.

        Raises:
            DatasetNotFoundError: If the dataset is not found and cannot be
                downloaded; the note says where to get it.
        """
        annotations = os.path.join(self.root, self.filename)
        images = os.path.join(self.root, self.image_dir)
        if os.path.isfile(annotations) and os.path.isdir(images):
            return
        if self.url is not None:
            archive = os.path.join(self.root, os.path.basename(self.url))
            if os.path.isfile(archive):
                extract_archive(archive, self.root)
                return
        if not self.download or self.url is None:
            err = DatasetNotFoundError(self)
            err.add_note(
                f"Get {type(self).__name__} from {self.source} and place "
                f"{self.filename} and the {self.image_dir}/ folder in {self.root}."
            )
            raise err
        download_url(self.url, self.root)
        archive = os.path.join(self.root, os.path.basename(self.url))
        if self.checksum and not check_integrity(archive, self.md5):
            raise RuntimeError(
                f"{archive} does not match its MD5 {self.md5}: the download is corrupt or "
                "the mirror changed; delete it and download again."
            )
        extract_archive(archive, self.root)

    def __len__(self) -> int:
        """Return the number of images.

        Returns:
            Length of the dataset.
        """
        return len(self.files)

    @property
    def all_captions(self) -> list[str]:
        """Every caption of the split, image by image, for retrieval."""
        return [c for captions in self.captions for c in captions]

    @property
    def caption_to_image(self) -> Tensor:
        """Image index (into this dataset) of each of :attr:`all_captions`."""
        return torch.tensor(
            [i for i, captions in enumerate(self.captions) for _ in captions], dtype=torch.long
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return an image with its captions.

        Args:
            index: Index to return.

        Returns:
            Sample with ``image``, ``captions``, ``caption_short``, ``caption_long``.
        """
        captions = self.captions[index]
        sample: dict[str, Any] = {
            "image": load_image(self.files[index]),
            "captions": list(captions),
            "caption_short": captions[0],
            "caption_long": " ".join(captions),
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class RSITMD(RSCaptionDataset):
    """RSITMD: Remote Sensing Image-Text Match Dataset.

    4,743 images (256 x 256) with five captions each; the retrieval protocol uses
    the test split (452 images, 2,260 captions). Layout: ``dataset_RSITMD.json``
    and ``images/``.

    If you use this dataset in your research, please cite:

    * https://doi.org/10.1109/TGRS.2021.3078451
    """

    filename = "dataset_RSITMD.json"
    image_dir = "images"
    source = "https://github.com/xiaoyuan1996/AMFMN (links in its README)"


class RSICD(RSCaptionDataset):
    """RSICD: Remote Sensing Image Captioning Dataset.

    10,921 images (224 x 224) with five captions each; the retrieval protocol uses
    the test split (1,093 images, 5,465 captions). Layout: ``dataset_rsicd.json``
    and ``RSICD_images/``.

    If you use this dataset in your research, please cite:

    * https://doi.org/10.1109/TGRS.2017.2776321
    """

    filename = "dataset_rsicd.json"
    image_dir = "RSICD_images"
    source = "https://github.com/201528014227051/RSICD_optimal (links in its README)"


class UCMCaptions(RSCaptionDataset):
    """UCM-Captions: the UC Merced land-use images with five captions each.

    2,100 images (256 x 256, 21 classes). Layout: ``dataset.json`` and ``imgs/``.

    If you use this dataset in your research, please cite:

    * https://doi.org/10.1109/CITS.2016.7546397
    """

    filename = "dataset.json"
    image_dir = "imgs"
    source = "https://github.com/201528014227051/RSICD_optimal (UCM-captions link in its README)"
