#!/usr/bin/env python3
"""Fabricate a tiny AIR-SLT in the real layout: annotations/anno.json + imgs/*.jpg."""

import json
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

# Small images so the reference map pipeline runs in a test; objects drawn where the polygons are.
IMAGES = {"airport_1.jpg": (320, 256), "port_3.jpg": (256, 256)}
QUERIES = [
    {
        "caption": "a red plane parks near the terminal on the left",
        "jpg_name": "airport_1.jpg",
        "points": [[[40, 60], [120, 60], [120, 150], [40, 150]]],
    },
    {
        "caption": "two white tanks stand by the runway",
        "jpg_name": "airport_1.jpg",
        "points": [
            [[180, 40], [230, 40], [230, 90], [180, 90]],
            [[250, 160], [300, 160], [300, 230], [250, 230]],
        ],
    },
    {
        "caption": "a blue pool lies in the middle of the harbour",
        "jpg_name": "port_3.jpg",
        "points": [[[100, 90], [170, 100], [160, 180], [95, 170]]],
    },
]
COLOURS = {"airport_1.jpg": [(220, 40, 40), (245, 245, 245)], "port_3.jpg": [(40, 80, 200)]}


def main() -> None:
    root = os.path.dirname(os.path.abspath(__file__))
    for folder in ("imgs", "annotations"):
        shutil.rmtree(os.path.join(root, folder), ignore_errors=True)
        os.makedirs(os.path.join(root, folder))
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGES.items():
        background = rng.integers(60, 140, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        queries = [q for q in QUERIES if q["jpg_name"] == name]
        for query, colour in zip(queries, COLOURS[name], strict=True):
            for polygon in query["points"]:
                draw.polygon([tuple(p) for p in polygon], fill=colour)
        image.save(os.path.join(root, "imgs", name), quality=90)
    with open(os.path.join(root, "annotations", "anno.json"), "w") as f:
        json.dump(QUERIES, f, indent=1)


if __name__ == "__main__":
    main()
