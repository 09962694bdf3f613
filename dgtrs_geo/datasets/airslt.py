"""AIR-SLT: the semantic-localization (SeLo) benchmark of text queries over large aerial images."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image
from torchgeo.datasets import DatasetNotFoundError, NonGeoDataset

from .utils import ManifestError, load_image


class AIRSLT(NonGeoDataset):
    """AIR-SLT semantic-localization dataset.

    `AIR-SLT <https://github.com/xiaoyuan1996/SemanticLocalizationMetrics>`__ pairs 59 text queries
    with 22 Google-Earth images (3k x 2k to 10k x 10k pixels, mean GSD 0.3245 m). Each query comes
    with the ground-truth polygons of the regions it describes, in pixel (x, y).

    Dataset format:

    * ``anno.json`` (at the root or in ``annotations/``): a list of
      ``{"caption": str, "jpg_name": str, "points": [[[x, y], ...], ...]}``
    * images named by ``jpg_name`` in ``imgs/``, ``images/`` or the root itself

    Samples are dicts with ``image`` (float [3, H, W], 0..255), ``caption`` (str), ``polygons``
    (list of float ``(N, 2)`` pixel (x, y) arrays) and ``jpg_name`` (str).

    The dataset is distributed by its authors through cloud drives that need a browser, so it
    cannot be downloaded automatically: place the files under ``root``.

    If you use this dataset in your research, please cite:

    * https://doi.org/10.1109/TGRS.2022.3162236
    """

    annotation_paths: ClassVar[tuple[str, ...]] = (
        "anno.json",
        os.path.join("annotations", "anno.json"),
    )
    image_dirs: ClassVar[tuple[str, ...]] = ("imgs", "images", ".")

    def __init__(
        self,
        root: str = "data",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """Initialize a new AIR-SLT dataset instance.

        Args:
            root: root directory where the dataset lies.
            transforms: a function/transform that takes an input sample and returns a
                transformed version.

        Raises:
            DatasetNotFoundError: if ``anno.json`` or an image it names is missing.
            ManifestError: if ``anno.json`` is malformed (a ``ValueError`` too).

        """
        self.root = root
        self.transforms = transforms
        self._verify()
        self.entries = self._load_annotations()
        self._check_images()

    def _verify(self) -> None:
        """Find ``anno.json``; AIR-SLT cannot be downloaded, so a missing file is an error."""
        for relative in self.annotation_paths:
            path = os.path.join(self.root, relative)
            if os.path.isfile(path):
                self.annotation_path = path
                return
        raise DatasetNotFoundError(self)

    def _load_annotations(self) -> list[dict[str, Any]]:
        with open(self.annotation_path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{self.annotation_path} is not valid JSON: {error}") from error
        if not isinstance(raw, list) or not raw:
            raise ManifestError(
                f"{self.annotation_path} must hold a non-empty JSON list of queries"
            )
        entries = []
        for index, item in enumerate(raw):
            missing = {"caption", "jpg_name", "points"} - set(item)
            if missing:
                raise ManifestError(
                    f"{self.annotation_path}: entry {index} lacks {sorted(missing)}; each entry "
                    "needs caption, jpg_name and points"
                )
            polygons = []
            for polygon in item["points"]:
                array = np.asarray(polygon, dtype=np.float64)
                if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 3:
                    raise ManifestError(
                        f"{self.annotation_path}: entry {index} ({item['caption']!r}) has a "
                        f"polygon of shape {array.shape}; polygons need >= 3 (x, y) vertices"
                    )
                polygons.append(array)
            if not polygons:
                raise ManifestError(f"{self.annotation_path}: entry {index} has no polygon")
            entries.append(
                {
                    "caption": str(item["caption"]),
                    "jpg_name": str(item["jpg_name"]),
                    "polygons": polygons,
                }
            )
        return entries

    def _check_images(self) -> None:
        missing = sorted(
            {e["jpg_name"] for e in self.entries if self._find_image(e["jpg_name"]) is None}
        )
        if missing:
            error = DatasetNotFoundError(self)
            error.add_note(
                f"{len(missing)} images named in {self.annotation_path} are missing "
                f"(first: {missing[:3]}); place them in one of {list(self.image_dirs)} under root"
            )
            raise error

    def _find_image(self, name: str) -> str | None:
        for directory in self.image_dirs:
            path = os.path.join(self.root, directory, name)
            if os.path.isfile(path):
                return path
        return None

    def image_path(self, index: int) -> str:
        """Path of the image of sample ``index``.

        Args:
            index: index of the sample.

        Returns:
            The image file's path.

        """
        path = self._find_image(self.entries[index]["jpg_name"])
        assert path is not None  # checked in __init__
        return path

    def image_array(self, index: int) -> np.ndarray:
        """Return the image of sample ``index`` as uint8 ``[H, W, 3]`` RGB for the SeLo maps.

        Reads the file directly: AIR-SLT images reach 10k x 10k pixels, where the float tensor
        of :meth:`__getitem__` would take four times the memory.

        Args:
            index: index of the sample.

        Returns:
            The RGB pixels.

        """
        with Image.open(self.image_path(index)) as image:
            return np.asarray(image.convert("RGB"))

    def __len__(self) -> int:
        """Return the number of queries in the dataset.

        Returns:
            length of the dataset

        """
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return one query with its image and ground-truth polygons.

        Args:
            index: index to return.

        Returns:
            the sample: ``image``, ``caption``, ``polygons`` and ``jpg_name``.

        """
        entry = self.entries[index]
        sample = {
            "image": load_image(self.image_path(index)),
            "caption": entry["caption"],
            "polygons": [polygon.copy() for polygon in entry["polygons"]],
            "jpg_name": entry["jpg_name"],
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def plot(
        self,
        sample: dict[str, Any],
        show_titles: bool = True,
        suptitle: str | None = None,
        polygon_colors: Sequence[str] = ("lime",),
    ) -> Figure:
        """Plot a sample: the image, its polygons and, when present, the ``prediction`` map.

        Args:
            sample: a sample returned by :meth:`__getitem__`, optionally with ``prediction``
                (a 2-D probability map of the image's size).
            show_titles: whether to show the query as the title.
            suptitle: optional string to use as a suptitle.
            polygon_colors: colours cycled over the ground-truth polygons.

        Returns:
            a matplotlib Figure with the rendered sample.

        """
        image = sample["image"].permute(1, 2, 0).numpy() / 255
        ncols = 2 if "prediction" in sample else 1
        fig, axs = plt.subplots(1, ncols, figsize=(6 * ncols, 6), squeeze=False)
        for ax in axs[0]:
            ax.imshow(np.clip(image, 0, 1))
            for index, polygon in enumerate(sample["polygons"]):
                closed = np.vstack([polygon, polygon[:1]])
                color = polygon_colors[index % len(polygon_colors)]
                ax.plot(closed[:, 0], closed[:, 1], color=color, linewidth=2)
            ax.axis("off")
        if "prediction" in sample:
            axs[0, 1].imshow(
                np.asarray(sample["prediction"]), cmap="jet", alpha=0.5, vmin=0, vmax=1
            )
            if show_titles:
                axs[0, 1].set_title("Prediction")
        if show_titles:
            axs[0, 0].set_title(sample["caption"], fontsize=9, wrap=True)
        if suptitle is not None:
            fig.suptitle(suptitle)
        return fig
