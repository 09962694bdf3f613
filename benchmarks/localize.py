"""Localization throughput, query latency, memory and speed-up over the reference recipe, as JSON.

Usage: python benchmarks/localize.py [--arch dgtrs-tiny] [--device cpu]
       [--only a,b,c,d,fingerprint]

(a) windows/s of the full encode pipeline (windowed reads, DataLoader, device resize, batched
    encode) vs windows/s of bare ``encode_image`` on ready tensors, same model, batch and device;
(b) latency of a new query on an already indexed 10k x 10k raster (text forward included). The
    index holds the raster's full plan; its embeddings are random unit vectors, since latency
    does not depend on their values and encoding 10^8 pixels would take this CPU most of an hour;
(c) peak RSS of ``localize`` (index built, then one query written as GeoTIFF, GeoPackage and PNG)
    on 5k x 5k and 20k x 20k rasters and on strips (5000 x 1, 1 x 5000, 20000 x 64; width x
    height), each in a fresh process, to show memory is bounded whatever the raster's shape;
(d) the same raster, model and queries through a straightforward reference implementation written
    here (one crop at a time via a JPEG file, per-pixel Python accumulation) vs ``localize``;
(fingerprint) the cost of a raster's content fingerprint on a 1 GiB GeoTIFF of random pixels:
    page cache dropped (``posix_fadvise``), file in the page cache but not in the fingerprint
    cache, and a fingerprint cache hit; beside it, the bare read speed and in-memory hash speeds.
Rasters are sparse tiled GeoTIFFs (only the tiles written take disk) or small random ones, dated
an hour back like a user's existing raster (the fingerprint cache does not keep the digest of a
file changed in the last two seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from dgtrs_geo.localization import EmbeddingIndex, localize, plan_windows
from dgtrs_geo.localization.api import _plan_meta
from dgtrs_geo.localization.encode import encode_windows
from dgtrs_geo.localization.raster import RasterSource
from dgtrs_geo.models import EmbeddingModel, create_clip


def make_model(arch: str, device: str) -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(create_clip(arch), model_id=f"random-{arch}", device=device)


def _settle(path: Path) -> Path:
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(hour_ago, hour_ago))
    return path


def make_raster(path: Path, size: int, fill: str = "sparse", height: int | None = None) -> Path:
    """A tiled GeoTIFF ``size`` wide and ``height`` (default ``size``) tall.

    ``sparse`` writes one tile of texture and leaves the rest unwritten; ``random`` writes every
    pixel (strips and small rasters).
    """
    height = size if height is None else height
    profile = {
        "driver": "GTiff", "width": size, "height": height, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "sparse_ok": True,
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 0.5, 0.5),
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        if fill == "random":
            dst.write(rng.integers(0, 255, (3, height, size), dtype=np.uint8))
        else:
            dst.write(
                rng.integers(0, 255, (3, 256, 256), dtype=np.uint8), window=((0, 256), (0, 256))
            )
    return _settle(path)


def bench_encode(
    model, tmp: Path, size: int, batch: int, num_workers: int | None, repeats: int
) -> dict:
    """Pipeline and bare encode alternate ``repeats`` times; the best of each is kept, so a burst
    of load from other processes does not land on one side only."""
    raster = make_raster(tmp / "a.tif", size, fill="random")
    source = RasterSource(raster)
    plan = plan_windows(size, size, (256, 512, 768))
    encode_windows(model, source, plan.windows[:batch], batch_size=batch)  # warm-up
    x = torch.randn(batch, 3, model.image_size, model.image_size, device=model.device)
    model.encode_image(x)
    pipeline_s, bare_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        kept, _ = encode_windows(
            model, source, plan.windows, batch_size=batch, num_workers=num_workers
        )
        pipeline_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(-(-len(plan) // batch)):
            model.encode_image(x)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        bare_s.append(time.perf_counter() - start)
    pipeline, bare = len(kept) / min(pipeline_s), len(plan) / min(bare_s)
    return {
        "raster_px": size, "windows": len(plan), "batch": batch, "repeats": repeats,
        "pipeline_windows_per_s": round(pipeline, 2), "bare_encode_windows_per_s": round(bare, 2),
        "ratio": round(pipeline / bare, 3),
    }  # fmt: skip


def bench_query(model, tmp: Path, size: int, repeats: int) -> dict:
    """Best of ``repeats`` new queries, wall and CPU time: CPU time (all threads of this process)
    barely moves when other jobs load the machine, wall time does."""
    raster = make_raster(tmp / "q.tif", size)
    source = RasterSource(raster)
    plan = plan_windows(size, size, (256, 512, 768))
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(plan), model.embed_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    index = EmbeddingIndex.create(
        model_id=model.model_id, fingerprint=source.fingerprint(), raster=source.describe(),
        plan=_plan_meta(plan, False, 0.5), windows=plan.windows, embeddings=embeddings,
    )  # fmt: skip
    index.save(tmp / "q-index")
    kwargs = {"index": tmp / "q-index", "stretch": "none"}
    start = time.perf_counter()
    localize(raster, "warm-up", model, **kwargs)
    times: dict = {"first_call_s": round(time.perf_counter() - start, 3), "repeats": repeats}
    for label, outputs in (("compute", ()), ("with_geotiff_and_gpkg", ("heatmap", "polygons"))):
        wall, cpu = [], []
        for i in range(repeats):
            extra = {"out_dir": tmp / f"q-out-{label}-{i}", "outputs": outputs} if outputs else {}
            start, start_cpu = time.perf_counter(), time.process_time()
            localize(raster, f"a tennis court between two white buildings {i}", model, **kwargs,
                     **extra)  # fmt: skip
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        times |= {f"{label}_s": round(min(wall), 3), f"{label}_cpu_s": round(min(cpu), 3),
                  f"{label}_s_all": [round(t, 3) for t in wall]}  # fmt: skip
    return {
        "raster_px": size, "windows": len(plan), **times,
        "note": "first_call_s: warm-up (lazy imports, first forward, the raster's first fingerprint)",
    }  # fmt: skip


def _rss_child(raster: str, arch: str, device: str, index_dir: str) -> None:
    from dgtrs_geo.localization import build_index

    model = make_model(arch, device)
    model.encode_image(torch.zeros(1, 3, model.image_size, model.image_size, device=model.device))
    before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    index = build_index(raster, model, index_dir=index_dir, stretch="none")
    index_s = time.perf_counter() - start
    index_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out_dir = Path(index_dir) / "out"
    start = time.perf_counter()
    (result,) = localize(
        raster, "a red roof", model, index_dir=index_dir, stretch="none", out_dir=out_dir,
        outputs=("heatmap", "polygons", "overlay"),
    )  # fmt: skip
    query_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Image.open(result.paths["overlay"]) as png:
        overlay_px = list(png.size)
    row = {
        "windows": len(index),
        "index_s": round(index_s, 1),
        "query_and_write_s": round(query_s, 2),
        "rss_after_model_load_mib": round(before_mib, 1),
        "peak_rss_index_mib": round(index_peak_mib, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "localize_added_mib": round(peak_mib - before_mib, 1),
        "heatmap_cells": list(result.heatmap.shape),
        "overlay_png_px": overlay_px,
    }
    print(json.dumps(row))


def bench_rss(arch: str, device: str, tmp: Path, shapes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    for width, height in shapes:
        name = f"r{width}x{height}"
        square_and_large = width == height and width >= 256
        raster = make_raster(
            tmp / f"{name}.tif", width, "sparse" if square_and_large else "random", height
        )
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(raster), "--arch", arch, "--device", device,
             "--index-dir", str(tmp / f"idx-{name}"), "--threads", str(torch.get_num_threads())],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        row = json.loads(out.strip().splitlines()[-1])
        index_mib = sum(p.stat().st_size for p in (tmp / f"idx-{name}").rglob("*.npy")) / 2**20
        rows.append({"raster_px": f"{width} x {height}", **row, "index_mib": round(index_mib, 1)})
    return rows


def _drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (clean pages go without root)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_s(path: Path) -> float:
    buffer = bytearray(8 << 20)
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    return time.perf_counter() - start


def _hash_speeds() -> dict:
    """In-memory MiB/s of XXH3-128 (chosen) and of the stdlib hashes it was measured against."""
    import xxhash

    data = memoryview(np.random.default_rng(0).bytes(256 << 20))
    speeds = {}
    for name, new in (("xxh3_128", xxhash.xxh3_128), ("sha256", hashlib.sha256),
                      ("blake2b", hashlib.blake2b)):  # fmt: skip
        best = float("inf")
        for _ in range(2):
            digest, start = new(), time.perf_counter()
            for offset in range(0, len(data), 8 << 20):
                digest.update(data[offset : offset + (8 << 20)])
            best = min(best, time.perf_counter() - start)
        speeds[name] = round(len(data) / best / 2**20)
    return speeds


def bench_fingerprint(tmp: Path, gib: float, repeats: int) -> dict:
    """Cold, page-cached and cached fingerprints of a GeoTIFF of ``gib`` GiB of random pixels."""
    from dgtrs_geo.localization.fingerprint import raster_fingerprint

    side = int((gib * 2**30 / 3) ** 0.5)
    path = tmp / "fingerprint.tif"
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 0.5, 0.5),
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, side, 1024):
            rows = min(1024, side - row)
            data = rng.integers(0, 255, (3, rows, side), dtype=np.uint8)
            dst.write(data, window=((row, row + rows), (0, side)))
    _settle(path)
    os.environ["DGTRS_GEO_CACHE"] = str(tmp / "fingerprint-cache")
    cache = tmp / "fingerprint-cache" / "fingerprints"
    cold, warm, hit, read_cold, read_warm = [], [], [], [], []
    for _ in range(repeats):
        _drop_page_cache(path)
        read_cold.append(_read_s(path))
        read_warm.append(_read_s(path))
        for runs, drop in ((cold, True), (warm, False)):
            if drop:
                _drop_page_cache(path)
            for entry in cache.glob("*.json"):
                entry.unlink()
            start = time.perf_counter()
            fingerprint = raster_fingerprint(path)
            runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert raster_fingerprint(path) == fingerprint
        hit.append(time.perf_counter() - start)
    size = path.stat().st_size
    path.unlink()
    return {
        "file_gib": round(size / 2**30, 3), "repeats": repeats,
        "cold_s": round(min(cold), 3), "cold_s_all": [round(t, 3) for t in cold],
        "page_cached_s": round(min(warm), 3),
        "cache_hit_ms": round(min(hit) * 1000, 3),
        "bare_read_cold_s": round(min(read_cold), 3), "bare_read_cached_s": round(min(read_warm), 3),
        "hash_mib_per_s_in_memory": _hash_speeds(),
    }  # fmt: skip


def naive_reference(image: np.ndarray, queries: list[str], model, scales, tmp: Path) -> list:
    """The published recipe as its authors ran it: crops through JPEG files, one forward each."""
    height, width = image.shape[:2]
    windows = set()
    for s in scales:
        for offset in (0, s // 2):
            for y in range(offset, height, s):
                for x in range(offset, width, s):
                    w, h = min(s, width), min(s, height)
                    windows.add((min(x, width - w), min(y, height - h), w, h))
    windows = sorted(windows)
    maps = []
    for query in queries:
        text = model.encode_text([query])[0]
        scores = []
        for i, (x, y, w, h) in enumerate(windows):
            crop_path = tmp / f"crop{i}.jpg"
            Image.fromarray(image[y : y + h, x : x + w]).save(crop_path)
            crop = Image.open(crop_path).convert("RGB").resize((256, 256), Image.BICUBIC)
            scores.append(float(model.encode_image(model.preprocess(crop)[None])[0] @ text))
        heat = np.zeros((height, width))
        for py in range(height):
            for px in range(width):
                covering = [s for (x, y, w, h), s in zip(windows, scores, strict=True)
                            if x <= px < x + w and y <= py < y + h]  # fmt: skip
                heat[py, px] = sum(covering) / len(covering)
        maps.append(heat)
    return maps


def bench_reference(model, tmp: Path, size: int, scales: tuple[int, ...]) -> dict:
    raster = make_raster(tmp / "ref.tif", size, fill="random")
    with rasterio.open(raster) as src:
        image = src.read().transpose(1, 2, 0)
    queries = ["a red roof", "a swimming pool"]
    start = time.perf_counter()
    naive_reference(image, queries, model, scales, tmp)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    localize(raster, queries, model, scales=scales, index_dir=tmp / "ref-idx", out_dir=tmp / "ref-out",
             outputs=("heatmap", "polygons"))  # fmt: skip
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    localize(raster, queries, model, scales=scales, index_dir=tmp / "ref-idx", out_dir=tmp / "ref-out",
             outputs=("heatmap", "polygons"))  # fmt: skip
    again_s = time.perf_counter() - start
    return {
        "raster_px": size, "scales": list(scales), "queries": len(queries),
        "naive_reference_s": round(naive_s, 2), "localize_first_s": round(first_s, 2),
        "localize_indexed_s": round(again_s, 3),
        "speedup_first": round(naive_s / first_s, 1), "speedup_indexed": round(naive_s / again_s, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="dgtrs-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--encode-size", type=int, default=2048)
    parser.add_argument("--query-size", type=int, default=10000)
    parser.add_argument(
        "--rss-shapes",
        default="5000x5000,20000x20000,5000x1,1x5000,20000x64",
        help="width x height of each raster in (c)",
    )
    parser.add_argument("--fingerprint-gib", type=float, default=1.0)
    parser.add_argument("--reference-size", type=int, default=384)
    parser.add_argument("--only", default="a,b,c,d,fingerprint")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs in (a), (b) and (fingerprint); the best counts"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rss-child")
    parser.add_argument("--index-dir")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child(args.rss_child, args.arch, args.device, args.index_dir)
        return
    model = make_model(args.arch, args.device)
    report: dict = {
        "benchmark": "localize", "arch": args.arch, "device": args.device,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0], "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }  # fmt: skip
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        # Fingerprint digests and indexes of these throw-away rasters stay out of the user's cache.
        os.environ["DGTRS_GEO_CACHE"] = str(tmp / "cache")
        if "a" in only:
            report["a_encode"] = bench_encode(
                model, tmp, args.encode_size, args.batch, args.num_workers, args.repeats
            )
        if "b" in only:
            report["b_query_latency"] = bench_query(model, tmp, args.query_size, args.repeats)
        if "c" in only:
            shapes = [tuple(int(v) for v in s.split("x")) for s in args.rss_shapes.split(",")]
            report["c_localize_peak_rss"] = bench_rss(args.arch, args.device, tmp, shapes)
        if "d" in only:
            report["d_vs_reference"] = bench_reference(
                model, tmp, args.reference_size, (64, 128, 192)
            )
        if "fingerprint" in only:
            report["fingerprint"] = bench_fingerprint(tmp, args.fingerprint_gib, args.repeats)
    report["load_avg_1min_end"] = os.getloadavg()[0]
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
