"""Catalog search (ANN vs exact) and catalog indexing throughput, as JSON.

Usage: python benchmarks/catalog.py [--sizes 1000000,10000000] [--only search,indexing,alternatives]
                                    [--device cpu|cuda] [--workdir DIR --keep]

search: for each size, that many clustered unit vectors of dimension 512 (ViT-B/16's) are written
    block by block straight into a float16 ``.npy`` memory map, as a catalog stores them (never all
    in RAM). Real window embeddings are not spread evenly on the sphere: they fill a narrow cone
    (two random image embeddings have cosine ~0.3), in clusters of similar ground of very uneven
    sizes, each varying along few directions. So: 4,096 centres around a shared direction,
    lognormal cluster sizes, each cluster spread along a 32-d subspace (64 subspaces shared among
    the clusters) with a per-cluster spread, plus a little isotropic noise. Queries are fresh draws
    from the same distribution (near the data). For each size it records
    - ``exact``: the time of one exact pass (``exact_search``, the reference) for all queries;
    - ``build``: ``build_ann`` in a child process: wall and CPU seconds, peak RSS, bytes on disk;
    - ``search``: a child process loads the index and answers one query at a time, top 100: the
      first query with the embeddings' and index's pages dropped from the page cache
      (``posix_fadvise``: "cold"), then every query again: median and p95; recall@100 against exact;
      its peak RSS (``VmHWM``, which counts the pages of the memory-mapped rows it touched), its
      peak private memory (``RssAnon``, sampled) and both parts after loading and searching;
      ``--sweep`` adds recall and latency for other ``nprobe``. Wall seconds on a shared machine
      depend on its load (recorded); CPU seconds per query much less.
alternatives (not run by default; slow): the libraries not chosen on the same vectors and queries:
    USearch 2.26 HNSW (i8, M=16, ef_construction 128) with and without an exact re-rank of 1,000
    candidates, and LanceDB IVF_PQ (float32 column: its float16 index build was far slower) with
    ``nprobes`` 64 and 256 (of 2 sqrt(n) partitions) and ``refine_factor`` 10 and 40; build time,
    size, recall@100, latency.
indexing: ``Catalog.build`` over 200 small scenes vs the single-raster pipeline (``Localizer.index``
    per scene) and vs bare encoding (``encode_windows`` per scene) on the same windows, same model,
    batch, device and torch threads (``--threads``): the ratio of windows per second (target
    >= 0.9). ``--device cuda`` runs it on a GPU (use ``--arch dgtrs-vit-b-16`` there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dgtrs_geo.catalog.ann import AnnIndex, build_ann, exact_search

DIM = 512
K = 100


def clustered_unit_vectors(
    path: Path, rows: int, dim: int = DIM, *, centres: int = 4096, seed: int = 0
) -> dict:
    """Write ``rows`` clustered unit vectors to ``path`` (float16 ``.npy``), block by block."""
    rng = np.random.default_rng(seed)
    model = _cluster_model(rng, dim, centres)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, 1 << 16):
        out[start : start + (1 << 16)] = _draw(rng, model, min(1 << 16, rows - start))
    out.flush()
    del out
    return model


def _cluster_model(rng: np.random.Generator, dim: int, centres: int) -> dict:
    cone = rng.normal(size=dim)
    cone /= np.linalg.norm(cone)
    c = rng.normal(size=(centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    c += 0.8 * cone  # the shared direction: mean pairwise cosine ~0.28
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    bases = np.stack([np.linalg.qr(rng.normal(size=(dim, 32)))[0] for _ in range(64)])
    weights = rng.lognormal(0.0, 1.0, centres)
    return {
        "centres": c.astype(np.float32),
        "bases": bases.astype(np.float32),
        "basis_of": rng.integers(64, size=centres),
        "spread": rng.uniform(0.3, 0.9, centres).astype(np.float32),
        "weights": weights / weights.sum(),
    }


def _draw(rng: np.random.Generator, model: dict, n: int) -> np.ndarray:
    c, bases = model["centres"], model["bases"]
    k = rng.choice(len(c), size=n, p=model["weights"])
    coefficients = rng.standard_normal((n, bases.shape[2]), dtype=np.float32)
    along = np.empty((n, c.shape[1]), np.float32)
    which = model["basis_of"][k]
    for b in np.unique(which):
        sel = which == b
        along[sel] = coefficients[sel] @ bases[b].T
    along *= model["spread"][k, None] / math.sqrt(bases.shape[2])
    noise = rng.standard_normal((n, c.shape[1]), dtype=np.float32) * (0.1 / math.sqrt(c.shape[1]))
    x = c[k] + along + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _status_mib() -> dict:
    """Peak RSS of this process (``VmHWM``: ``ru_maxrss`` would include the parent's peak before
    the fork) and its private (``RssAnon``) and file-backed (``RssFile``) parts now, in MiB."""
    names = {"VmHWM": "peak_rss_mib", "RssAnon": "rss_anon_mib", "RssFile": "rss_file_mib"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[names[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


class _AnonPeak:
    """Highest ``RssAnon`` seen while the block runs (sampled every 20 ms): the process's own
    memory, without the mapped files' pages that ``VmHWM`` also counts (reclaimable cache)."""

    def __enter__(self) -> _AnonPeak:
        self.peak_mib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, _status_mib()["rss_anon_mib"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, _status_mib()["rss_anon_mib"])


def _drop_cache(*paths: Path) -> None:
    """Evict these files' pages from the page cache (theirs only), for a cold first query."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process; return its JSON and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = json.loads(out.strip().splitlines()[-1])
    row["child_wall_s"] = round(time.perf_counter() - start, 1)
    row["child_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1
    )
    return row


def build_child(embeddings: Path, directory: Path) -> None:
    vectors = np.load(embeddings, mmap_mode="r")
    stages: dict[str, float] = {}
    start = time.perf_counter()

    def progress(fraction: float, stage: str) -> None:
        stages.setdefault(stage.split(" ")[0], round(time.perf_counter() - start, 1))

    with _AnonPeak() as anon:
        build_ann(vectors, directory, progress=progress)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "build_s": round(seconds, 1), "stages_started_s": stages,
        "peak_rss_anon_mib": anon.peak_mib, **_status_mib(),
    }))  # fmt: skip


def search_child(directory: Path, queries: Path, truth: Path, sweep: list[int]) -> None:
    q, expected = np.load(queries), np.load(truth)
    manifest = json.loads((directory / "ann.json").read_text())
    files = [directory / name for name in manifest.get("files", {})]
    _drop_cache(directory / manifest["embeddings"]["path"], *files)
    before = _status_mib()
    with _AnonPeak() as anon:
        start = time.perf_counter()
        index = AnnIndex.load(directory)
        load_s = time.perf_counter() - start
        after_load = _status_mib()
        start = time.perf_counter()
        index.search(q[:1], K)
        cold_s = time.perf_counter() - start
        row = {"load_s": round(load_s, 3), "cold_first_query_s": round(cold_s, 4)}
        row.update(_latency_recall(index, q, expected))
    row["peak_rss_anon_mib"] = anon.peak_mib
    row["nprobe"], row["rerank"] = index.nprobe, index.rerank
    row["rss_before_load"], row["rss_after_load"], row["rss_after_search"] = (
        before, after_load, _status_mib(),
    )  # fmt: skip
    default = index.nprobe
    row["sweep"] = []
    for nprobe in sweep:
        index.nprobe = nprobe
        row["sweep"].append({"nprobe": nprobe, **_latency_recall(index, q, expected)})
    index.nprobe = default
    print(json.dumps(row))


def _latency_recall(index: AnnIndex, q: np.ndarray, expected: np.ndarray) -> dict:
    """Wall and CPU seconds (all threads of this process) per query, and recall@100."""
    seconds, cpu, found = [], [], []
    for i in range(len(q)):
        start, start_cpu = time.perf_counter(), time.process_time()
        _, rows = index.search(q[i : i + 1], K)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        found.append(rows[0])
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(expected, found, strict=True)])
    return {
        "median_query_s": round(float(np.median(seconds)), 4),
        "p95_query_s": round(float(np.percentile(seconds, 95)), 4),
        "median_query_cpu_s": round(float(np.median(cpu)), 4),
        "recall_at_100": round(float(recall), 4),
    }


def _data(rows: int, work: Path, queries: int) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """The vectors (generated once into ``work``), queries and their exact top 100."""
    embeddings = work / f"embeddings-{rows}.npy"
    out: dict = {"rows": rows, "dim": DIM, "dtype": "float16", "queries": queries}
    start = time.perf_counter()
    if not embeddings.exists():
        model = clustered_unit_vectors(embeddings, rows)
        np.save(work / f"queries-{rows}.npy", _draw(np.random.default_rng(1), model, queries))
        out["generate_s"] = round(time.perf_counter() - start, 1)
    q = np.load(work / f"queries-{rows}.npy")
    start = time.perf_counter()
    _, expected = exact_search(np.load(embeddings, mmap_mode="r"), q, K)
    out["exact"] = {"one_pass_all_queries_s": round(time.perf_counter() - start, 2)}
    np.save(work / f"truth-{rows}.npy", expected)
    return embeddings, q, expected, out


def bench_search(rows: int, work: Path, queries: int, sweep: list[int]) -> dict:
    embeddings, _, _, out = _data(rows, work, queries)
    out["embeddings_bytes"] = embeddings.stat().st_size
    directory = work / f"ann-{rows}"
    shutil.rmtree(directory, ignore_errors=True)
    out["load_avg_before_build"] = os.getloadavg()[0]
    out["build"] = _child(["--build-child", str(embeddings), "--directory", str(directory)])
    manifest = json.loads((directory / "ann.json").read_text())
    out["index"] = {
        k: manifest.get(k) for k in ("kind", "factory", "nlist", "nprobe", "rerank", "faiss")
    }
    out["index"]["bytes_on_disk"] = sum(p.stat().st_size for p in directory.iterdir())
    out["index"]["bytes_per_row"] = round(out["index"]["bytes_on_disk"] / rows, 1)
    out["load_avg_before_search"] = os.getloadavg()[0]
    out["search"] = _child(
        ["--search-child", str(directory), "--queries-path", str(work / f"queries-{rows}.npy"),
         "--truth", str(work / f"truth-{rows}.npy"), "--sweep", ",".join(map(str, sweep))]
    )  # fmt: skip
    return out


def bench_alternatives(rows: int, work: Path, queries: int) -> dict:
    """The libraries not chosen, on the same vectors and queries: USearch HNSW and LanceDB."""
    embeddings, q, expected, out = _data(rows, work, queries)
    vectors = np.load(embeddings, mmap_mode="r")
    out["load_avg"] = os.getloadavg()[0]
    for name, run in (("usearch", _usearch), ("lancedb", _lancedb)):
        try:
            out[name] = run(vectors, q, expected, work)
        except ImportError as error:
            out[name] = {"skipped": str(error)}
    return out


def _timed_search(search, q: np.ndarray, expected: np.ndarray) -> dict:
    """Recall@100 and wall / CPU seconds per query of ``search(query [1, d]) -> rows``."""
    seconds, cpu, found = [], [], []
    for query in q:
        start, start_cpu = time.perf_counter(), time.process_time()
        found.append(search(query[None]))
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(expected, found, strict=True)])
    return {
        "recall_at_100": round(float(recall), 4),
        "median_query_s": round(float(np.median(seconds)), 4),
        "median_query_cpu_s": round(float(np.median(cpu)), 4),
    }


def _usearch(vectors: np.ndarray, q: np.ndarray, expected: np.ndarray, work: Path) -> dict:
    from usearch.index import Index

    before, start, start_cpu = _status_mib(), time.perf_counter(), time.process_time()
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="i8", connectivity=16, expansion_add=128)  # fmt: skip
    for s in range(0, len(vectors), 1 << 16):
        block = np.asarray(vectors[s : s + (1 << 16)], np.float32)
        index.add(np.arange(s, s + len(block)), block, threads=os.cpu_count())
    out: dict = {"config": "HNSW i8, M=16, ef_construction=128"}
    out["build_s"], out["build_cpu_s"] = round(time.perf_counter() - start, 1), round(time.process_time() - start_cpu, 1)  # fmt: skip
    out["rss_anon_added_mib"] = round(_status_mib()["rss_anon_mib"] - before["rss_anon_mib"], 1)
    index.save(str(work / "alternative.usearch"))
    out["bytes_on_disk"] = (work / "alternative.usearch").stat().st_size
    (work / "alternative.usearch").unlink()
    for ef, rerank in ((128, 0), (256, 0), (128, 1000)):
        index.expansion_search = ef

        def search(query: np.ndarray, rerank: int = rerank) -> np.ndarray:
            keys = np.asarray(index.search(query, max(K, rerank), threads=1).keys, np.int64)
            return exact_search(vectors, query, K, rows=keys)[1][0] if rerank else keys

        out[f"ef{ef}_rerank{rerank}"] = _timed_search(search, q, expected)
    return out


def _lancedb(vectors: np.ndarray, q: np.ndarray, expected: np.ndarray, work: Path) -> dict:
    import lancedb
    import pyarrow as pa

    rows, dim = vectors.shape
    schema = pa.schema([("row", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])

    def batches():
        for s in range(0, rows, 1 << 16):
            block = np.asarray(vectors[s : s + (1 << 16)], np.float32)
            vector = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim)
            yield pa.record_batch([pa.array(np.arange(s, s + len(block))), vector], schema=schema)

    shutil.rmtree(work / "alternative.lance", ignore_errors=True)
    table = lancedb.connect(str(work / "alternative.lance")).create_table(
        "windows", data=pa.RecordBatchReader.from_batches(schema, batches()), schema=schema
    )
    start, start_cpu = time.perf_counter(), time.process_time()
    partitions = 2 ** round(math.log2(2 * math.sqrt(rows)))
    table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_PQ",
                       num_partitions=partitions, num_sub_vectors=dim // 8)  # fmt: skip
    out: dict = {"config": f"IVF_PQ, {partitions} partitions, {dim // 8} sub-vectors, float32"}
    out["index_s"], out["index_cpu_s"] = round(time.perf_counter() - start, 1), round(time.process_time() - start_cpu, 1)  # fmt: skip
    out["bytes_on_disk"] = sum(p.stat().st_size for p in (work / "alternative.lance").rglob("*") if p.is_file())  # fmt: skip
    for nprobes, refine in ((64, 10), (256, 10), (256, 40)):

        def search(query: np.ndarray, nprobes: int = nprobes, refine: int = refine) -> np.ndarray:
            hits = table.search(query[0]).metric("cosine").nprobes(nprobes).refine_factor(refine)
            return hits.limit(K).select(["row"]).to_arrow()["row"].to_numpy()

        out[f"nprobes{nprobes}_refine{refine}"] = _timed_search(search, q, expected)
    shutil.rmtree(work / "alternative.lance")
    return out


def bench_indexing(
    arch: str, device: str, scenes: int, size: int, repeats: int, threads: int | None, tmp: Path
) -> dict:
    """Catalog.build over ``scenes`` small rasters vs the single-raster pipeline, same windows.

    Three ways of indexing the same windows with the same model, batch, device and threads:

    - ``catalog``: ``Catalog.build`` (fingerprints, encodes, writes one GeoParquet part and one
      record per scene, then finalizes: the search index and its exact or ANN index);
    - ``single_raster``: the single-raster pipeline, ``Localizer.index`` per scene (what
      ``dgtrs-geo localize`` and ``build_index`` run: fingerprint, encode, a verified index
      folder written per scene), the comparison the issue asks for;
    - ``encode_only``: ``encode_windows`` per scene and nothing else (no fingerprint, nothing
      written): a bound that no indexer reaches, reported beside it.

    Each side is run once on a few scenes before timing (imports, Lightning, first forwards), and
    every scene's file digest is cached (both sides fingerprint through that cache). The
    sides alternate ``repeats`` times, in reversed order every other repeat, each into a fresh
    folder; every repeat's wall and CPU seconds and load average are recorded. The ratios are
    taken from the best wall time of each side (the run least disturbed by other processes),
    ``ratio_cpu`` from the best CPU seconds (which other processes disturb much less).
    """
    import torch

    from dgtrs_geo.catalog import Catalog
    from dgtrs_geo.localization.encode import encode_windows
    from dgtrs_geo.localization.fingerprint import SETTLE_NS, raster_fingerprint
    from dgtrs_geo.localization.options import LocalizationOptions
    from dgtrs_geo.localization.raster import RasterSource
    from dgtrs_geo.localization.session import Localizer
    from dgtrs_geo.localization.windows import plan_windows
    from dgtrs_geo.models import EmbeddingModel, create_clip

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = EmbeddingModel(create_clip(arch), model_id=f"random-{arch}", device=device)
    folder = tmp / "scenes"
    folder.mkdir()
    paths = [_scene(folder / f"scene{i:03d}.tif", size, i) for i in range(scenes)]
    scales, batch = (64, 128), 32
    plans = [plan_windows(size, size, scales).windows for _ in paths]
    # Both pipelines fingerprint a raster from a per-file digest cache: fill it first (files
    # younger than SETTLE_NS are not cached), so neither side pays the first hashing.
    time.sleep(SETTLE_NS / 1e9)
    for path in paths:
        raster_fingerprint(path)
    options = {"scales": scales, "scale_unit": "px", "batch_size": batch, "device": device}

    def encode_only(paths: list[Path], run: str) -> int:
        return sum(
            len(encode_windows(model, RasterSource(p), w, batch_size=batch)[0])
            for p, w in zip(paths, plans, strict=False)
        )

    def single_raster(paths: list[Path], run: str) -> int:
        run_options = LocalizationOptions(index_dir=str(tmp / f"indexes-{run}"), **options)
        localizer = Localizer(model, run_options)
        return sum(len(localizer.index(p).windows) for p in paths)

    def catalog(paths: list[Path], run: str) -> int:
        if len(paths) == scenes:
            sources = [str(folder)]
        else:
            sources = [str(p) for p in paths]
        return len(Catalog.build(sources, model, tmp / f"{run}.dgtrs-catalog", **options))

    sides = {"encode_only": encode_only, "single_raster": single_raster, "catalog": catalog}
    for name, side in sides.items():
        side(paths[:3], f"warm-up-{name}")
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    windows: dict[str, int] = {}
    load = []
    for repeat in range(repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        load.append(round(os.getloadavg()[0], 2))
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            windows[name] = sides[name](paths, f"{name}-{repeat}")
            wall[name].append(round(time.perf_counter() - start, 2))
            cpu[name].append(round(time.process_time() - start_cpu, 2))
    rate = {name: windows[name] / min(wall[name]) for name in sides}
    return {
        "arch": arch, "device": device, "scenes": scenes, "scene_px": size,
        "scales_px": list(scales), "batch": batch, "repeats": repeats,
        "torch_threads": torch.get_num_threads(), "load_avg_1min_per_repeat": load,
        "windows": windows, "wall_s": wall, "cpu_s": cpu,
        "windows_per_s": {name: round(r, 1) for name, r in rate.items()},
        "ratio": round(rate["catalog"] / rate["single_raster"], 3),
        "ratio_vs_encode_only": round(rate["catalog"] / rate["encode_only"], 3),
        "ratio_per_repeat": [
            round(s / c, 3) for s, c in zip(wall["single_raster"], wall["catalog"], strict=True)
        ],
        # CPU seconds of this process: much less sensitive than wall time to other processes.
        "ratio_cpu": round(min(cpu["single_raster"]) / min(cpu["catalog"]), 3),
        "ratio_cpu_vs_encode_only": round(min(cpu["encode_only"]) / min(cpu["catalog"]), 3),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
    }  # fmt: skip


def _scene(path: Path, size: int, seed: int) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(seed).integers(0, 255, (3, size, size), dtype=np.uint8)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000 + 1000 * seed, 4000000, 1.0, 1.0),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--only", default="search,indexing")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--sweep", default="", help="other nprobe values to try, e.g. 16,32,64")
    parser.add_argument("--workdir", help="keep generated data here (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep --workdir's files at the end")
    parser.add_argument("--arch", default="dgtrs-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--scene-px", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs in indexing")
    parser.add_argument(
        "--threads", type=int, help="torch threads in indexing (default: torch's own choice)"
    )
    parser.add_argument("--build-child")
    parser.add_argument("--search-child")
    parser.add_argument("--directory")
    parser.add_argument("--queries-path")
    parser.add_argument("--truth")
    args = parser.parse_args()
    if args.build_child:
        build_child(Path(args.build_child), Path(args.directory))
        return
    if args.search_child:
        sweep = [int(s) for s in args.sweep.split(",") if s]
        search_child(Path(args.search_child), Path(args.queries_path), Path(args.truth), sweep)
        return
    import faiss

    report: dict = {
        "benchmark": "catalog", "cpu_count": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
        "load_avg_1min": os.getloadavg()[0], "faiss": faiss.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
    }  # fmt: skip
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as name:
        work = Path(args.workdir or name)
        work.mkdir(parents=True, exist_ok=True)
        if "search" in only:
            sweep = [int(s) for s in args.sweep.split(",") if s]
            report["search"] = []
            for rows in (int(float(s)) for s in args.sizes.split(",")):
                report["search"].append(bench_search(rows, work, args.queries, sweep))
                if not args.keep:
                    for path in work.glob(f"*-{rows}*"):
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
        if "alternatives" in only:
            report["alternatives"] = [
                bench_alternatives(int(float(s)), work, args.queries) for s in args.sizes.split(",")
            ]
        if "indexing" in only:
            report["indexing"] = bench_indexing(
                args.arch,
                args.device,
                args.scenes,
                args.scene_px,
                args.repeats,
                args.threads,
                Path(name),
            )
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
