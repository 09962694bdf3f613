#!/usr/bin/env python3
"""Fabricate RSITMD, RSICD and UCM-Captions in their public layout (run from this folder).

Each dataset gets its annotation JSON (``images[]`` with ``filename``, ``imgid``,
``split``, ``sentences[]`` of ``raw``/``tokens``/``imgid``/``sentid``, ``sentids``),
its image folder, and a zip of both as a download would fetch it.
"""

import json
import os
import shutil
import zipfile

import numpy as np
from PIL import Image

# folder -> (annotation file, image folder, image extension, images per split)
LAYOUTS = {
    "rsitmd": ("dataset_RSITMD.json", "images", "tif", {"train": 3, "test": 2}),
    "rsicd": ("dataset_rsicd.json", "RSICD_images", "jpg", {"train": 3, "val": 2, "test": 2}),
    "ucm": ("dataset.json", "imgs", "tif", {"train": 2, "val": 1, "test": 2}),
}
SCENES = ["airport", "beach", "forest", "harbor", "meadow", "parking", "river"]


def fabricate(
    folder: str, annotations: str, image_dir: str, ext: str, splits: dict[str, int]
) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, image_dir))
    rng = np.random.default_rng(len(folder))
    images, sentid = [], 0
    for split, count in splits.items():
        for _ in range(count):
            imgid = len(images)
            scene = SCENES[imgid % len(SCENES)]
            filename = f"{scene}_{imgid}.{ext}"
            array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(array).save(os.path.join(folder, image_dir, filename))
            sentences = []
            for k in range(5):
                raw = f"caption {k} of {scene} image {imgid} ."
                sentences.append(
                    {"tokens": raw.split()[:-1], "raw": raw, "imgid": imgid, "sentid": sentid}
                )
                sentid += 1
            images.append(
                {
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentences": sentences,
                    "sentids": [s["sentid"] for s in sentences],
                }
            )
    with open(os.path.join(folder, annotations), "w") as f:
        json.dump({"images": images, "dataset": folder}, f)
    with zipfile.ZipFile(os.path.join(folder, f"{folder}.zip"), "w") as archive:
        archive.write(os.path.join(folder, annotations), annotations)
        for image in images:
            name = os.path.join(image_dir, image["filename"])
            archive.write(os.path.join(folder, name), name)


def main() -> None:
    for folder, layout in LAYOUTS.items():
        fabricate(folder, *layout)


if __name__ == "__main__":
    main()
