"""Turn a segmentation mask into a text layout a language model can caption.

For each labelled class the layout gives its share of the image, how many separate regions it
forms and where the largest lie: a cell of a 3 x 3 grid (top-left ... bottom-right), a band
across or down the image, or everywhere. The numbers are computed here, not by the model, so
mask captions state counts and positions that are true.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .sources import MissingInputError

__all__ = ["ClassLayout", "describe_layout", "layout_of", "read_class_table", "read_mask"]

_GRID = (
    ("top-left", "top", "top-right"),
    ("left", "centre", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)


@dataclass(frozen=True)
class ClassLayout:
    """Where one class lies in a mask.

    Args:
        name: the class name.
        share: fraction of the image's pixels in the class, in [0, 1].
        regions: number of connected regions (8-connectivity) above the size floor.
        places: where its largest regions lie, largest first, without repeats: ``"in the
            top-left"`` (the 3 x 3 cell of the centroid), ``"across the bottom from left to
            right"`` or ``"down the left side from top to bottom"`` (bands spanning two thirds
            of the image, like roads and rivers), or ``"spread across the image"``.

    """

    name: str
    share: float
    regions: int
    places: tuple[str, ...]

    def to_text(self) -> str:
        """Return the layout as one line: ``- building: 12.5% of the image, 2 regions, ...``."""
        plural = "s" if self.regions != 1 else ""
        where = self.places[0]
        if len(self.places) > 1:
            where = f"{', '.join(self.places[:-1])} and {self.places[-1]}"
        share = f"{100 * self.share:.1f}% of the image"
        return f"- {self.name}: {share}, {self.regions} region{plural}, {where}"


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-band label mask (PNG, TIFF/GeoTIFF, ...) as a 2-D integer array.

    Args:
        path: the mask file.

    Returns:
        The label ids, shape ``(H, W)``.

    Raises:
        InputError: if the file has more than one band (a ``ValueError`` too).

    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as src:
            if src.count != 1:
                raise InputError(f"mask {path} has {src.count} bands; a label mask has one")
            return src.read(1)
    from PIL import Image

    with Image.open(path) as image:
        # palette ("P") masks keep their indices, which are the class ids
        array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"mask {path} has shape {array.shape}; a label mask has one band")
    return array


def read_class_table(path: str | Path) -> dict[int, str]:
    """Read a class table mapping label ids to names.

    Accepted forms: CSV with columns ``id,name`` (a header row is optional), JSON object
    ``{"1": "building", ...}`` or JSON list ``["background", "building", ...]`` (index = id).

    Raises:
        MissingInputError: if the file does not exist (a ``FileNotFoundError`` too).
        InputError: if the file cannot be read as a class table (a ``ValueError`` too).

    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"class table {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else None
    except ValueError as error:  # not UTF-8, not JSON
        raise InputError(f"class table {path} cannot be read: {error}") from error
    if path.suffix.lower() == ".json":
        if not isinstance(data, list | dict):
            raise InputError(f"class table {path} must hold a JSON object or list of class names")
        items = enumerate(data) if isinstance(data, list) else data.items()
        try:
            return {int(k): str(v) for k, v in items}
        except ValueError:
            raise InputError(f"class table {path}: its keys must be label ids (numbers)") from None
    table: dict[int, str] = {}
    for row in csv.reader(text.splitlines()):
        if not row or row[0].strip().lower() in ("id", "value", "label"):
            continue
        if len(row) < 2 or not row[0].strip().isdigit():
            raise InputError(f"class table {path}: row {row} needs an id (a number) and a name")
        table[int(row[0])] = row[1].strip()
    if not table:
        raise InputError(f"class table {path} lists no classes")
    return table


def _place(box: tuple[slice, slice], centre: tuple[float, float], shape: tuple[int, ...]) -> str:
    """Say where a region with bounding ``box`` and ``centre`` (row, col) lies in the image."""
    (rows, cols), (cy, cx), (height, width) = box, centre, shape
    row, col = min(2, int(3 * cy / height)), min(2, int(3 * cx / width))
    tall = rows.stop - rows.start >= 2 * height / 3
    wide = cols.stop - cols.start >= 2 * width / 3
    if tall and wide:
        return "spread across the image"
    if wide:
        return f"across the {('top', 'middle', 'bottom')[row]} from left to right"
    if tall:
        return f"down the {('left side', 'centre', 'right side')[col]} from top to bottom"
    return f"in the {_GRID[row][col]}"


def layout_of(
    mask: np.ndarray,
    classes: Mapping[int, str],
    *,
    ignore: Sequence[int] = (),
    min_region: float = 0.001,
    max_places: int = 3,
) -> list[ClassLayout]:
    """Return the layout of every class present in ``mask``, largest share first.

    Args:
        mask: 2-D array of label ids.
        classes: id -> name; ids not in it count as unlabelled and are left out.
        ignore: ids to leave out even if named (background, no-data).
        min_region: regions smaller than this fraction of the image are not counted as regions
            (speckle in predicted or resampled masks); they still count toward the share.
        max_places: most regions placed per class (the largest ones).

    Returns:
        One :class:`ClassLayout` per class with at least one counted region.

    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    total = mask.size
    eight = np.ones((3, 3), dtype=bool)
    layouts = []
    for class_id, name in classes.items():
        if class_id in ignore:
            continue
        where = mask == class_id
        pixels = int(where.sum())
        if pixels == 0:
            continue
        labels, _ = ndimage.label(where, structure=eight)
        sizes = np.bincount(labels.ravel())[1:]
        kept = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_region * total]
        if not kept:
            continue
        boxes = ndimage.find_objects(labels)
        centres = ndimage.center_of_mass(where, labels, kept[:max_places])
        places = tuple(
            dict.fromkeys(
                _place(boxes[i - 1], centre, mask.shape)
                for i, centre in zip(kept[:max_places], centres, strict=True)
            )
        )
        layouts.append(ClassLayout(name, pixels / total, len(kept), places))
    return sorted(layouts, key=lambda layout: -layout.share)


def describe_layout(layouts: Sequence[ClassLayout]) -> str:
    """Return the layouts as the text block the masks prompt expects, one class per line."""
    if not layouts:
        return "- (no labelled class)"
    return "\n".join(layout.to_text() for layout in layouts)
