"""What a caption run reads: a manifest, an image folder, image + mask pairs, or user features.

Every source becomes a list of :class:`Item`, each with a stable ``id`` that the resumable
runner uses to know which items are done. The id is the row's own ``id`` key when a manifest
has one, else the image path as written relative to the source folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "Item",
    "MissingInputError",
    "read_image_folder",
    "read_items",
    "read_manifest",
    "read_user_features",
    "with_masks",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder a caption run names (manifest, images, masks, config, prompt) is missing."""


@dataclass
class Item:
    """One image to caption.

    Args:
        id: stable identity of the item across runs.
        image: absolute path of the image.
        fields: the other fields of its row (``caption_short``, ``caption_long``, ``split``,
            ``provenance``, extras), carried into the output row.
        mask: absolute path of its label mask, for the masks step.

    """

    id: str
    image: Path
    fields: dict[str, Any] = field(default_factory=dict)
    mask: Path | None = None


def _check_unique(items: list[Item], where: Path) -> list[Item]:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise InputError(
                f"{where}: items {seen[item.id]} and {index} share the id {item.id!r}; "
                "give each row a unique 'id' key"
            )
        seen[item.id] = index
    return items


def read_manifest(path: str | Path) -> list[Item]:
    """Read a DGTRSD JSONL manifest (one object per line with at least ``image``).

    Relative ``image`` (and ``mask``) paths are resolved against the manifest's folder.

    Raises:
        MissingInputError: if the manifest does not exist (a ``FileNotFoundError`` too).
        InputError: on a line that is not a JSON object with ``image``, or on duplicate ids.

    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"manifest {path} does not exist")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise InputError(
                f"{path}:{number}: a manifest row is a JSON object with an 'image' path"
            )
        row = dict(row)
        image = row.pop("image")
        mask = row.pop("mask", None)
        item_id = str(row.pop("id", image))
        items.append(
            Item(
                id=item_id,
                image=(path.parent / image).resolve(),
                fields=row,
                mask=(path.parent / mask).resolve() if mask else None,
            )
        )
    return _check_unique(items, path)


def _images_under(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(folder: str | Path) -> list[Item]:
    """Read every image under ``folder``; a sidecar ``<name>.txt`` holds its short caption.

    Raises:
        MissingInputError: if the folder does not exist or holds no image.

    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"image folder {folder} does not exist")
    items = []
    for image in _images_under(folder):
        sidecar = image.with_suffix(".txt")
        short = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        items.append(
            Item(
                id=image.relative_to(folder).as_posix(),
                image=image.resolve(),
                fields={"caption_short": short},
            )
        )
    if not items:
        raise MissingInputError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return items


def read_items(source: str | Path) -> list[Item]:
    """Read a manifest (``.jsonl`` file) or an image folder, whichever ``source`` is."""
    source = Path(source)
    if source.is_dir():
        return read_image_folder(source)
    return read_manifest(source)


def with_masks(items: list[Item], masks: str | Path, images: str | Path) -> list[Item]:
    """Attach to each item the mask under ``masks`` with the same relative path and stem.

    Args:
        items: items read from the image folder ``images``.
        masks: folder of label masks mirroring ``images``; any image suffix.
        images: the folder the items were read from.

    Raises:
        MissingInputError: if an image has no mask (the message names the first few).

    """
    masks, images = Path(masks), Path(images).resolve()
    by_stem = {p.relative_to(masks).with_suffix("").as_posix(): p for p in _images_under(masks)}
    missing = []
    for item in items:
        stem = item.image.relative_to(images).with_suffix("").as_posix()
        if stem in by_stem:
            item.mask = by_stem[stem].resolve()
        else:
            missing.append(stem)
    if missing:
        raise MissingInputError(
            f"{len(missing)} image(s) have no mask with the same name under {masks}: {missing[:5]}"
        )
    return items


def read_user_features(
    rasters: str | Path,
    vectors: str | Path,
    caption_column: str,
    chips: str | Path,
    *,
    long_caption_column: str | None = None,
    layer: str | None = None,
    chip_size: float = 224,
) -> list[Item]:
    """Cut a chip around every feature of a user's vector file and make it an item.

    The features and chips are the training issue's user data (:class:`UserCaptions`): a
    GeoPackage (or GeoJSON, Shapefile) drawn over GeoTIFFs, with a caption attribute. Chips
    are saved as PNG under ``chips`` (kept across runs, written atomically), so the manifest
    the pipeline writes points at real images and carries each chip's CRS and bounds.

    Args:
        rasters: raster file or folder of rasters.
        vectors: the vector file.
        caption_column: attribute holding each feature's short caption.
        chips: folder for the chip PNGs.
        long_caption_column: attribute holding a long caption, if the user wrote some.
        layer: layer of a multi-layer vector file.
        chip_size: chip width in pixels.

    Returns:
        One item per feature that overlaps the rasters, id ``<vector file name>#<feature id>``.

    """
    from PIL import Image

    from ..datasets.user import UserCaptions
    from .images import to_uint8

    dataset = UserCaptions(
        rasters,
        vectors,
        caption_column,
        long_caption_column=long_caption_column,
        layer=layer,
        chip_size=chip_size,
    )
    chips = Path(chips)
    chips.mkdir(parents=True, exist_ok=True)
    items = []
    for i, fid in enumerate(dataset.index["fid"]):
        query = dataset.chip(i)
        path = chips / f"{Path(vectors).stem}-{fid}.png"
        if not path.exists():
            pixels = to_uint8(dataset[query]["image"].numpy())
            partial = path.with_suffix(".png.part")
            Image.fromarray(pixels.transpose(1, 2, 0)).save(partial, format="PNG")
            partial.replace(path)
        x, y, _ = query
        row = dataset.index.iloc[i]
        fields = {
            "caption_short": row["caption_short"],
            "caption_long": row["caption_long"] if long_caption_column else "",
            "crs": dataset.crs.to_string(),
            "bounds": [x.start, y.start, x.stop, y.stop],
        }
        items.append(Item(id=f"{Path(vectors).name}#{fid}", image=path.resolve(), fields=fields))
    return items
