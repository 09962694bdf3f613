"""Localization quality on synthetic AIR-SLT-style scenes: SeLo Rsu, Ras, Rda, Rmi per map recipe.

Usage: python benchmarks/selo_quality.py [--out output/selo-quality] [--seeds 0,1,2] [--scenes 8]
           [--size 1024] [--modes reference,fast] [--models trained-248,trained-77,random]
           [--dense maskclip,clearclip,maskclip+window,window] [--train-length N] [--retrain]
           [--threads 1] [--figure 3]

For each seed:
1. draws ``--scenes`` large scenes (dgtrs_geo.datasets.synthetic_selo; 2 targets each, a short and
   a long query per target) and writes them as an AIR-SLT folder, ``<out>/seed-<s>/airslt``, which
   ``dgtrs-geo evaluate selo --dataset AIRSLT --root <that folder> --model <checkpoint>`` reads;
2. trains the tiny model with the real ``torchgeo fit --config trainers/tiny-synthetic-selo.yaml``
   (seeded), or reuses it from ``cache_dir("models")/selo-quality`` (keyed by the recipe, the seed
   and the sources of the training data), and derives two more checkpoints: the same weights with
   the positional table cut to 77 rows, and random weights of the same architecture;
3. scores every query with every map recipe: each model in each ``--modes`` (the functions
   ``dgtrs-geo evaluate selo`` calls), the trained model's dense (patch-level) maps per ``--dense``
   variant (see :func:`dense_variant`; ``window`` is a control without patch features), and two
   oracles from the generator's own masks: the mask itself (the ceiling of any
   map) and each window scored by the share of its pixels in the mask (the ceiling of window-level
   maps), finished like the reference and the fast recipe.
Columns: the four SeLo metrics, and two sharpness measures: ``edge`` = mean map value in a band
of 32 px inside the ground-truth outline minus that in a band of 32 px outside it; ``mass`` =
share of the map's sum inside the mask. Means over queries, per query kind, their standard
deviation over queries and, with several seeds, over seeds. Writes ``selo_quality.json``,
``selo_quality.md`` (also printed) and ``selo_quality.png`` (maps of a few queries) to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

import dgtrs_geo  # noqa: E402
from dgtrs_geo.cache import cache_dir  # noqa: E402
from dgtrs_geo.datasets import AIRSLT  # noqa: E402
from dgtrs_geo.datasets.synthetic_selo import make_scene, write_airslt  # noqa: E402
from dgtrs_geo.evaluation.selo import region_mask, selo_metrics  # noqa: E402
from dgtrs_geo.localization.dense import (  # noqa: E402
    dense_probability_maps,
    patch_grid,
    patch_index_bytes,
    patch_mean_map,
)
from dgtrs_geo.localization.reference import (  # noqa: E402
    fast_probability_map,
    reference_probability_map,
)
from dgtrs_geo.localization.windows import REFERENCE_SCALES, plan_windows  # noqa: E402
from dgtrs_geo.models import TextTruncationWarning, create_clip, save_checkpoint  # noqa: E402
from dgtrs_geo.models.checkpoints import read_checkpoint  # noqa: E402
from dgtrs_geo.models.factory import build_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "trainers" / "tiny-synthetic-selo.yaml"
# What the trained weights depend on besides the recipe: a change retrains.
TRAINING_SOURCES = (
    "dgtrs_geo/datasets/synthetic_selo.py",
    "dgtrs_geo/datasets/synthetic.py",
    "dgtrs_geo/datamodules/synthetic_selo.py",
    "dgtrs_geo/datamodules/base.py",
    "dgtrs_geo/trainers/dgtrs_clip.py",
    "dgtrs_geo/losses.py",
    "dgtrs_geo/curriculum.py",
)
METRICS = ("rsu", "ras", "rda", "rmi", "edge", "mass")
BAND = 32  # px, the width of the bands of the edge measure
SCENE_STREAM = 7  # scenes of the benchmark: seeds (seed, 7, n), never a training scene's


def write_scenes(folder: Path, seed: int, count: int, size: int) -> Path:
    scenes = [make_scene((seed, SCENE_STREAM, n), size, size) for n in range(count)]
    write_airslt(folder, scenes)
    return folder


def _training_overrides(seed: int, train_length: int | None) -> list[str]:
    overrides = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    if train_length is not None:
        overrides.append(f"--data.init_args.train_length={train_length}")
    return overrides


def _training_key(overrides: Sequence[str]) -> str:
    digest = hashlib.sha256(RECIPE.read_bytes())
    for source in TRAINING_SOURCES:
        digest.update((ROOT / source).read_bytes())
    digest.update(" ".join(overrides).encode())
    return digest.hexdigest()[:16]


def train_or_reuse(
    seed: int, train_length: int | None = None, retrain: bool = False, threads: int = 1
) -> tuple[Path, dict[str, Any]]:
    """The trained checkpoints of ``seed`` (trained now, or as cached) and the training record."""
    overrides = _training_overrides(seed, train_length)
    key = _training_key(overrides)
    folder = cache_dir("models") / "selo-quality" / f"tiny-selo-seed{seed}-{key}"
    if (folder / "meta.json").is_file() and not retrain:
        return folder, {**json.loads((folder / "meta.json").read_text()), "reused": True}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".training-") as tmp:
        export = Path(tmp) / "export"
        command = [
            sys.executable, "-m", "torchgeo", "fit", "--config", str(RECIPE), *overrides,
            f"--trainer.default_root_dir={tmp}", f"--model.init_args.export_dir={export}",
            "--trainer.enable_progress_bar=false",
        ]  # fmt: skip
        # Tiny models on a shared CPU: one thread per process ran a training step 7x faster than
        # two here (0.33 s against 2.5 s under load), as threads wait on each other.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
        seconds = time.perf_counter() - start
        _derived_checkpoints(export / "dgtrs.pt", export, seed)
        meta = {
            "seconds": round(seconds, 1),
            "command": "torchgeo fit --config trainers/tiny-synthetic-selo.yaml "
            + " ".join(overrides),
            "key": key,
            "threads": threads,
        }
        (export / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(export, folder)
    return folder, {**meta, "reused": False}


def _derived_checkpoints(trained: Path, folder: Path, seed: int) -> None:
    """The same weights read through 77 positions, and random weights of the architecture."""
    state, _ = read_checkpoint(trained)
    state["positional_embedding"] = state["positional_embedding"][:77]
    save_checkpoint(build_clip(state, quick_gelu=True), folder / "dgtrs-77.pt")
    torch.manual_seed(seed)
    save_checkpoint(create_clip("dgtrs-tiny"), folder / "random.pt")


def bands(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within BAND px inside and outside the mask's outline (Euclidean distance)."""
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)
    return (mask > 0) & (inside <= BAND), (mask == 0) & (outside <= BAND)


def sharpness(prob_map: np.ndarray, mask: np.ndarray, band: tuple) -> dict[str, float]:
    inner, outer = band
    return {
        "edge": float(prob_map[inner].mean() - prob_map[outer].mean()),
        "mass": float((prob_map * mask).sum() / max(prob_map.sum(), 1e-12)),
    }


def oracle_window_maps(
    mask: np.ndarray, scales: Sequence[int], modes: Sequence[str]
) -> dict[str, np.ndarray]:
    """Window-level maps of a perfect window scorer: score = share of the window in the mask."""
    height, width = mask.shape
    plan = plan_windows(width, height, scales)
    integral = cv2.integral(mask.astype(np.float64))
    x, y, w, h = plan.windows.T
    inside = integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]
    mean = patch_mean_map(plan.windows, (inside / (w * h))[:, None, None], (height, width))
    span = mean.max() - mean.min()
    unit = (mean - mean.min()) / span if span > 0 else np.zeros_like(mean)
    maps = {}
    if "reference" in modes:  # the reference's finish: uint8, median blur 251
        maps["reference"] = cv2.medianBlur((255 * unit).astype(np.uint8), 251) / 255.0
    if "fast" in modes:  # the fast mode's: Gaussian of a quarter of the smallest window
        fast = gaussian_filter(unit, min(scales) / 4, mode="nearest")
        maps["fast"] = (fast - fast.min()) / max(fast.max() - fast.min(), 1e-12)
    return maps


def _score(rows: dict, name: str, prob_map: np.ndarray, entry: dict, seconds: float) -> None:
    polygons, mask, band = entry["polygons"], entry["mask"], entry["band"]
    metrics = {**selo_metrics(prob_map, polygons), **sharpness(prob_map, mask, band)}
    rows.setdefault(name, []).append({**metrics, "kind": entry["kind"], "seconds": seconds})


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start


def dense_variant(name: str) -> tuple[str, float]:
    """``"maskclip"``: patch scores; ``"maskclip+window"``: half the patch's score, half its
    window's; ``"window"``: the window's score at patch resolution with the dense smoothing (a
    control: what the dense finish alone does, without patch features)."""
    if name == "window":
        return "maskclip", 1.0
    method, _, blend = name.partition("+")
    return method, 0.5 if blend else 0.0


def score_image(
    image: np.ndarray,
    entries: list[dict],
    models: dict[str, Any],
    settings: argparse.Namespace,
    rows: dict[str, list[dict]],
) -> list[dict[str, np.ndarray]]:
    """Score the queries of one image with every map recipe; return each query's maps."""
    functions = {"fast": fast_probability_map, "reference": reference_probability_map}
    captions = [e["caption"] for e in entries]
    maps: list[dict[str, np.ndarray]] = [{} for _ in entries]
    for variant in settings.dense:
        name = f"trained-248 dense-{variant}"
        method, weight = dense_variant(variant)
        found, seconds = _timed(
            lambda m=method, w=weight: dense_probability_maps(
                image, captions, models["trained-248"], settings.scales, m, window_weight=w
            )
        )
        for query_maps, prob_map, entry in zip(maps, found, entries, strict=True):
            _score(rows, name, prob_map, entry, seconds / len(entries))
            query_maps[name] = prob_map
    for query_maps, entry in zip(maps, entries, strict=True):
        for label in settings.models:
            model = models[label]
            for mode in settings.modes:
                prob_map, seconds = _timed(
                    functions[mode], image, entry["caption"], model, settings.scales
                )
                _score(rows, f"{label} {mode}", prob_map, entry, seconds)
                query_maps[f"{label} {mode}"] = prob_map
        _score(rows, "oracle mask", entry["mask"].astype(np.float64), entry, 0.0)
        oracle = oracle_window_maps(entry["mask"], settings.scales, settings.modes)
        for mode, prob_map in oracle.items():
            _score(rows, f"oracle windows {mode}", prob_map, entry, 0.0)
            query_maps[f"oracle windows {mode}"] = prob_map
    return maps


def score_scenes(
    root: Path, models: dict[str, Any], settings: argparse.Namespace
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Score every query of an AIR-SLT folder with every map recipe; keep the first few maps."""
    dataset = AIRSLT(str(root))
    kinds = [e["kind"] for e in json.loads((root / "annotations" / "anno.json").read_text())]
    by_image: dict[str, list[int]] = {}
    for index, entry in enumerate(dataset.entries):
        by_image.setdefault(entry["jpg_name"], []).append(index)
    rows: dict[str, list[dict]] = {}
    kept: list[dict] = []
    for indexes in by_image.values():
        image = dataset.image_array(indexes[0])
        entries = []
        for i in indexes:
            mask = region_mask(image.shape[:2], dataset.entries[i]["polygons"])
            entry = {**dataset.entries[i], "kind": kinds[i], "mask": mask, "band": bands(mask)}
            entries.append(entry)
        maps = score_image(image, entries, models, settings, rows)
        for entry, query_maps in zip(entries, maps, strict=True):
            if len(kept) < settings.figure:
                kept.append({"image": image, "entry": entry, "maps": query_maps})
    return rows, kept


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for name, samples in rows.items():
        entry: dict[str, Any] = {"queries": len(samples)}
        for metric in METRICS:
            values = np.array([s[metric] for s in samples])
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        for kind in ("short", "long"):
            part = [s["rmi"] for s in samples if s["kind"] == kind]
            entry[f"rmi_{kind}"] = float(np.mean(part)) if part else float("nan")
        entry["seconds_per_query"] = float(np.mean([s["seconds"] for s in samples]))
        summary[name] = entry
    return summary


def disk_cost(size: int, scales: Sequence[int], model: Any) -> dict[str, Any]:
    """Bytes of window and patch embeddings: this benchmark's scenes, and ViT-B/16 on AIR-SLT."""
    windows = len(plan_windows(size, size, scales))
    grid, dim = patch_grid(model), model.embed_dim
    airslt = len(plan_windows(10_000, 10_000, REFERENCE_SCALES))
    return {
        "benchmark_scene": {
            "windows": windows, "grid": grid, "dim": dim,
            "window_bytes_float32": windows * dim * 4,
            "patch_bytes_float16": patch_index_bytes(windows, grid, dim),
        },
        "vit_b16_10k_x_10k": {
            "windows": airslt, "grid": 14, "dim": 512,
            "window_bytes_float32": airslt * 512 * 4,
            "patch_bytes_float16": patch_index_bytes(airslt, 14, 512),
        },
    }  # fmt: skip


def plot_maps(kept: list[dict], path: Path, columns: Sequence[str]) -> None:
    columns = [c for c in columns if all(c in k["maps"] for k in kept)]
    fig, axs = plt.subplots(
        len(kept), 1 + len(columns), figsize=(2.6 * (1 + len(columns)), 2.9 * len(kept)),
        squeeze=False,
    )  # fmt: skip
    for row, item in zip(axs, kept, strict=True):
        step = max(1, item["image"].shape[0] // 256)
        extent = (0, item["image"].shape[1], item["image"].shape[0], 0)
        for ax, name in zip(row, ["image", *columns], strict=True):
            ax.imshow(item["image"][::step, ::step], extent=extent)
            if name != "image":
                ax.imshow(item["maps"][name][::step, ::step], cmap="jet", alpha=0.55,
                          vmin=0, vmax=1, extent=extent)  # fmt: skip
            for polygon in item["entry"]["polygons"]:
                closed = np.vstack([polygon, polygon[:1]])
                ax.plot(closed[:, 0], closed[:, 1], color="lime", linewidth=1)
            ax.set_title(name, fontsize=7)
            ax.axis("off")
        caption = item["entry"]["caption"]
        row[0].set_title(("..." + caption[-60:]) if len(caption) > 60 else caption, fontsize=7)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    os.replace(partial, path)


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    root = write_scenes(out / f"seed-{seed}" / "airslt", seed, args.scenes, args.size)
    folder, training = train_or_reuse(seed, args.train_length, args.retrain, args.threads)
    files = {"trained-248": "dgtrs.pt", "trained-77": "dgtrs-77.pt", "random": "random.pt"}
    # Dense rows read the trained model, so it is loaded whatever --models says.
    names = dict.fromkeys(["trained-248"] * bool(args.dense) + args.models)
    models = {name: dgtrs_geo.load_model(folder / files[name]) for name in names}
    with warnings.catch_warnings():
        # Long queries are cut on the 77-token model: that is the point of its row.
        warnings.simplefilter("ignore", TextTruncationWarning)
        rows, kept = score_scenes(root, models, args)
    return {
        "seed": seed,
        "airslt": str(root),
        "checkpoints": str(folder),
        "training": training,
        "rows": summarise(rows),
        "samples": rows,
        "kept": kept,
        "disk": disk_cost(args.size, args.scales, next(iter(models.values()))),
    }


def combine(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per row: the mean over seeds of each seed's means, and their standard deviation."""
    combined = {}
    for name in results[0]["rows"]:
        values = {m: [r["rows"][name][m] for r in results] for m in results[0]["rows"][name]}
        combined[name] = {m: float(np.mean(v)) for m, v in values.items()}
        for metric in ("rmi", "rsu", "ras", "rda"):
            v = values[metric]
            combined[name][f"{metric}_seed_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return combined


def _row_order(names: Sequence[str]) -> list[str]:
    def key(name: str) -> tuple[int, str]:
        rank = next((i for i, p in enumerate(("oracle", "trained-248", "trained-77", "random"))
                     if name.startswith(p)), 4)  # fmt: skip
        return (0 if "reference" in name else 1 if "fast" in name else 2, f"{rank}{name}")

    return sorted(names, key=key)


def markdown(combined: dict[str, dict[str, float]], seeds: Sequence[int], queries: int) -> str:
    spread = "seeds" if len(seeds) > 1 else "queries"
    header = (
        f"| map ({queries} queries x {len(seeds)} seed(s)) | Rsu | Ras | Rda | Rmi (std over "
        f"{spread}) | Rmi short | Rmi long | edge | mass | s/query |"
    )
    lines = [header, "|" + "---|" * 10]
    for name in _row_order(list(combined)):
        r = combined[name]
        std = r["rmi_seed_std"] if len(seeds) > 1 else r["rmi_std"]
        lines.append(
            f"| {name} | {r['rsu']:.4f} | {r['ras']:.4f} | {r['rda']:.4f} | {r['rmi']:.4f} "
            f"({std:.4f}) | {r['rmi_short']:.4f} | {r['rmi_long']:.4f} | {r['edge']:.3f} | "
            f"{r['mass']:.3f} | {r['seconds_per_query']:.2f} |"
        )
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "selo-quality")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (scenes and training)")
    parser.add_argument("--scenes", type=int, default=8, help="scenes per seed (4 queries each)")
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels")
    parser.add_argument("--modes", default="reference,fast", help="window-level map modes")
    parser.add_argument(
        "--models", default="trained-248,trained-77,random", help="model rows (comma-separated)"
    )
    parser.add_argument(
        "--dense",
        default="maskclip,clearclip,maskclip+window,window",
        help="dense variants (see dense_variant; '' for none)",
    )
    parser.add_argument("--figure", type=int, default=3, help="queries drawn in the figure")
    parser.add_argument(
        "--train-length", type=int, default=None, help="training chips (default: the recipe's)"
    )
    parser.add_argument("--retrain", action="store_true", help="train even if cached")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (training too)")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.dense = [m for m in args.dense.split(",") if m]
    args.models = [m for m in args.models.split(",") if m]
    args.scales = REFERENCE_SCALES
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = [run_seed(args, seed, args.out) for seed in seeds]
    combined = combine(results)
    queries = results[0]["rows"]["oracle mask"]["queries"]
    table = markdown(combined, seeds, queries)
    report = {
        "command": "python benchmarks/selo_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "dgtrs_geo": dgtrs_geo.__version__},
        "settings": {"seeds": seeds, "scenes": args.scenes, "size": args.size,
                     "scales": list(args.scales), "modes": args.modes, "dense": args.dense},
        "evaluate_selo_equivalent": "dgtrs-geo evaluate selo --dataset AIRSLT --root "
        "<out>/seed-<s>/airslt --model <checkpoints>/dgtrs.pt --selo-modes "
        + ",".join(args.modes),
        "combined": combined,
        "per_seed": [{k: v for k, v in r.items() if k not in ("kept", "samples")} for r in results],
        "samples": {r["seed"]: r["samples"] for r in results},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    _write(args.out / "selo_quality.json", json.dumps(report, indent=1))
    _write(args.out / "selo_quality.md", table + "\n")
    columns = ["trained-248 fast", "trained-248 reference", *(f"trained-248 dense-{m}" for m in args.dense),
               "trained-77 fast", "random fast", "oracle windows reference"]  # fmt: skip
    if args.figure and results[0]["kept"]:
        plot_maps(results[0]["kept"], args.out / "selo_quality.png", columns)
    print(table)
    print(json.dumps({"training": [r["training"] for r in results], "seconds": report["seconds"]}))
    return report


if __name__ == "__main__":
    main()
