#!/usr/bin/env python3
"""Fabricate the caption pipeline's test data: images with short captions, label masks, a manifest.

Run from this folder: ``python data.py``. Writes ``images/`` (PNG and one 16-bit GeoTIFF, each
with a ``.txt`` short caption), ``masks/`` (single-band PNG label masks with known layouts),
``classes.csv`` and ``manifest.jsonl`` (DGTRSD rows with both captions).
"""

import json
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

ROOT = Path(__file__).parent
SIZE = 48

CLASSES = {0: "background", 1: "building", 2: "road", 3: "water", 4: "tree"}

# (name, short caption, long caption, split)
SCENES = [
    (
        "scene_00",
        "a red house beside a grey road",
        "A red house stands in the top-left corner. A grey road runs along the bottom of the image.",
        "train",
    ),
    (
        "scene_01",
        "a blue pond surrounded by trees",
        "A small blue pond lies in the centre. Green trees surround it on every side.",
        "train",
    ),
    (
        "scene_02",
        "two white buildings near a river",
        "Two white buildings stand on the left. A river flows down the right side of the image.",
        "train",
    ),
    (
        "scene_03",
        "a parking lot with many cars",
        "A parking lot fills the centre of the image. Many cars are parked in rows.",
        "val",
    ),
    (
        "scene_04",
        "a farmland with green fields",
        "Green fields cover the whole image. A narrow track crosses them from left to right.",
        "val",
    ),
]


def image(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    base = rng.integers(0, 256, size=3, dtype=np.uint8)
    pixels = np.broadcast_to(base, (SIZE, SIZE, 3)).copy()
    pixels[8:20, 8:20] = 255 - base
    return pixels


def mask(index: int) -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    match index:
        case 0:  # one building top-left, a road along the bottom
            labels[0:12, 0:12] = 1
            labels[40:48, :] = 2
        case 1:  # water in the centre, trees everywhere else
            labels[:] = 4
            labels[16:32, 16:32] = 3
        case 2:  # two buildings on the left, water on the right
            labels[4:12, 2:10] = 1
            labels[36:44, 2:10] = 1
            labels[:, 36:48] = 3
        case _:  # a road through the middle
            labels[22:26, :] = 2
    return labels


def main() -> None:
    (ROOT / "images").mkdir(exist_ok=True)
    (ROOT / "masks").mkdir(exist_ok=True)
    rows = []
    for index, (name, short, long, split) in enumerate(SCENES):
        if index == 4:
            # a 16-bit GeoTIFF, as satellite products come
            path = ROOT / "images" / f"{name}.tif"
            data = (image(index).astype(np.uint16) * 40).transpose(2, 0, 1)
            profile = {
                "driver": "GTiff",
                "width": SIZE,
                "height": SIZE,
                "count": 3,
                "dtype": "uint16",
                "crs": "EPSG:32633",
                "transform": from_origin(500000, 4000000, 0.5, 0.5),
            }
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
        else:
            path = ROOT / "images" / f"{name}.png"
            Image.fromarray(image(index)).save(path)
        path.with_suffix(".txt").write_text(short + "\n", encoding="utf-8")
        Image.fromarray(mask(index), mode="L").save(ROOT / "masks" / f"{name}.png")
        rows.append(
            {
                "image": f"images/{path.name}",
                "caption_short": short,
                "caption_long": long,
                "split": split,
            }
        )
    with open(ROOT / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(ROOT / "classes.csv", "w", encoding="utf-8") as f:
        f.write("id,name\n" + "".join(f"{k},{v}\n" for k, v in CLASSES.items()))


if __name__ == "__main__":
    main()
