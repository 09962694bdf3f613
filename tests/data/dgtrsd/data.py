#!/usr/bin/env python3
"""Fabricate DGTRSD manifests in the three formats (run from this folder)."""

import csv
import json
import os

import numpy as np
from PIL import Image

# name, colour, split, short caption, long caption
ROWS = [
    (
        "a.jpg",
        (200, 30, 30),
        "train",
        "A red field.",
        "A red field. It fills the whole image, flat and even.",
    ),
    (
        "b.png",
        (30, 200, 30),
        "train",
        "A green park.",
        "A green park. Grass covers every part of it.",
    ),
    (
        "c.jpg",
        (30, 30, 200),
        "train",
        "A blue lake.",
        "A blue lake. The water is calm and deep blue.",
    ),
    (
        "d.png",
        (220, 220, 40),
        "val",
        "A yellow beach.",
        "A yellow beach. Sand stretches from edge to edge.",
    ),
    (
        "e.jpg",
        (128, 128, 128),
        "test",
        "A grey car park.",
        "A grey car park. Concrete with no cars at all.",
    ),
    (
        "f.png",
        (250, 250, 250),
        "test",
        "A white roof.",
        "A white roof. It is seen from straight above.",
    ),
]


def main() -> None:
    os.makedirs("images", exist_ok=True)
    for name, colour, *_ in ROWS:
        array = np.empty((12, 16, 3), dtype=np.uint8)
        array[:] = colour
        Image.fromarray(array).save(os.path.join("images", name), quality=95)

    with open("dgtrsd.jsonl", "w") as f:
        for name, _, split, short, long in ROWS:
            # extra keys (scores, provenance) are part of the format and ignored
            row = {
                "image": f"images/{name}",
                "caption_short": short,
                "caption_long": long,
                "split": split,
                "clip_score": 0.31,
                "source": "fabricated",
            }
            f.write(json.dumps(row) + "\n")

    with open("dgtrsd.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption_short", "caption_long", "split"])
        for name, _, split, short, long in ROWS:
            writer.writerow([f"images/{name}", short, long, split])

    # Long-CLIP's ShareGPT4V layout: no split (all train), short = first sentence
    entries = [
        {
            "id": name.split(".")[0],
            "image": f"images/{name}",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image in detail."},
                {"from": "gpt", "value": long},
            ],
        }
        for name, _, _, _, long in ROWS
    ]
    with open("sharegpt4v.json", "w") as f:
        json.dump(entries, f, indent=1)


if __name__ == "__main__":
    main()
