"""Load time and embedding throughput of a random-weight model, printed as JSON.

Usage: python benchmarks/model.py [--arch dgtrs-vit-b-16] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import dgtrs_geo
from dgtrs_geo.models import create_clip, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="dgtrs-vit-b-16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(create_clip(args.arch), Path(tmp) / "random.pt", format="dgtrs")
        start = time.perf_counter()
        model = dgtrs_geo.load_model(path, device=args.device)
        load_s = time.perf_counter() - start

    images = torch.randn(args.batch, 3, model.image_size, model.image_size)
    model.encode_image(images[:2])  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
        model.encode_image(images)
    image_s = (time.perf_counter() - start) / (args.repeats * args.batch)

    texts = ["a tennis court located between two white buildings"] * args.batch
    model.encode_text(texts[:2])
    start = time.perf_counter()
    for _ in range(args.repeats):
        model.encode_text(texts)
    text_s = (time.perf_counter() - start) / (args.repeats * args.batch)

    print(
        json.dumps(
            {
                "arch": args.arch,
                "device": str(model.device),
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "load_s": round(load_s, 3),
                "batch": args.batch,
                "image_ms_per_item": round(1000 * image_s, 2),
                "text_ms_per_item": round(1000 * text_s, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
