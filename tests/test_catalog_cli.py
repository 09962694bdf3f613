"""The catalog command in real processes: exit codes, SIGKILL and resume, DDP, shards.

Every catalog made here is compared with one built in this process from the same scenes: same
scenes, same windows, same embeddings to 1e-6, whatever the number of processes or interruptions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine

from dgtrs_geo.catalog import Catalog
from dgtrs_geo.catalog.finalize import finalize

pytestmark = pytest.mark.slow

SCALES = ("--scales", "32", "64", "--scale-unit", "px")


def make_scene(path: Path, seed: int, size: int = 128, crs: str = "EPSG:32633") -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    profile = {"width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": Affine(2.0, 0, 500000 + 300 * seed, 0, -2.0, 5000000)}  # fmt: skip
    with rasterio.open(path, "w", driver="GTiff", **profile) as dst:
        dst.write(data)
    return path


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dgtrs_geo.cli", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600, **kwargs,
    )  # fmt: skip


def _rows(root: Path):
    columns = ["scene_id", "window_index", "col_off", "row_off", "width", "height", "embedding"]
    table = pq.read_table(root / "parts", columns=columns).to_pandas()
    return table.sort_values(["scene_id", "window_index"]).reset_index(drop=True)


def assert_same_catalog(root: Path, reference: Path) -> None:
    """Same scenes, same rows, same float32 embeddings to 1e-6, and the same search index."""
    got, want = _rows(root), _rows(reference)
    pd.testing.assert_frame_equal(got.drop(columns="embedding"), want.drop(columns="embedding"))
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]),
                               atol=1e-6, rtol=0)  # fmt: skip
    index, expected = Catalog.open(root).index, Catalog.open(reference).index
    assert list(index.scenes["scene_id"]) == list(expected.scenes["scene_id"])
    assert list(index.scenes["fingerprint"]) == list(expected.scenes["fingerprint"])
    np.testing.assert_array_equal(index.windows, expected.windows)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    for seed in range(6):
        make_scene(folder / f"tile_{seed}.tif", seed)
    return folder


@pytest.fixture(scope="module")
def reference(scenes: Path, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog of ``scenes`` built by one process, in this one."""
    root = tmp_path_factory.mktemp("reference") / "ref.dgtrs-catalog"
    Catalog.build([scenes], tiny_model, root, scales=(32, 64), scale_unit="px", device="cpu")
    return root


def test_index_and_search_commands(tmp_path: Path, scenes: Path, reference: Path,
                                   tiny_checkpoint: Path) -> None:  # fmt: skip
    root = tmp_path / "c.dgtrs-catalog"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a raster")
    done = cli("catalog", "index", str(scenes), str(broken), "-o", str(root), "--model",
               str(tiny_checkpoint), "--device", "cpu", *SCALES, "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr  # one scene failed, listed
    assert "indexed          6 scenes" in done.stdout
    assert f"FAILED {broken}" in done.stdout
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == 6 and [f["source"] for f in summary["failures"]] == [str(broken)]
    assert_same_catalog(root, reference)

    found = cli("catalog", "search", str(root), "a dense forest", "a small harbour", "--top", "3",
                "-o", str(tmp_path / "out"))  # fmt: skip
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split()[:3] == ["query", "rank", "score"]
    assert sum(line.startswith("a dense forest") for line in lines) == 3
    assert (tmp_path / "out" / "results.gpkg").is_file()

    refused = cli("catalog", "search", str(tmp_path), "a forest")
    assert refused.returncode == 2
    # One line (after the warnings of imported libraries), no traceback.
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"dgtrs-geo catalog search: error: {tmp_path} is not a dgtrs-geo catalog (no "
        "catalog.json): build one with `dgtrs-geo catalog index SOURCES... -o NAME.dgtrs-catalog`"
    )


def test_a_killed_run_resumes_with_each_scene_once(
    tmp_path: Path, tiny_model, tiny_checkpoint: Path
) -> None:
    # Six scenes of 358 windows each, encoded one window per batch: about a second a scene,
    # so the run is still going when it is killed.
    folder = tmp_path / "scenes"
    folder.mkdir()
    for seed in range(6):
        make_scene(folder / f"tile_{seed}.tif", seed, size=192)
    reference = tmp_path / "ref.dgtrs-catalog"
    Catalog.build([folder], tiny_model, reference, scales=(16, 32), scale_unit="px", device="cpu")
    root = tmp_path / "c.dgtrs-catalog"
    args = ["catalog", "index", str(folder), "-o", str(root), "--model", str(tiny_checkpoint),
            "--device", "cpu", "--scales", "16", "32", "--scale-unit", "px"]  # fmt: skip
    run = subprocess.Popen([sys.executable, "-m", "dgtrs_geo.cli", *args, "--batch-size", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list(root.glob("scenes/*.json"))) < 2 and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done_before = len(list(root.glob("scenes/*.json")))
    assert 2 <= done_before < 6
    assert not (root / "CURRENT").exists()
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"indexed    {6 - done_before:>7} scenes" in resumed.stdout
    assert f"unchanged  {done_before:>7} scenes" in resumed.stdout
    assert_same_catalog(root, reference)
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


def test_two_ddp_processes_build_the_same_catalog(tmp_path: Path, scenes: Path, reference: Path,
                                                  tiny_checkpoint: Path) -> None:  # fmt: skip
    root = tmp_path / "c.dgtrs-catalog"
    done = cli("catalog", "index", str(scenes), "-o", str(root), "--model", str(tiny_checkpoint),
               "--device", "cpu", "--devices", "2", "--strategy", "ddp", *SCALES,
               env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "MEMBER: 2/2" in done.stderr and "gloo" in done.stderr  # two processes, really
    # Global rank 0 reports every rank's scenes, once.
    assert "indexed          6 scenes" in done.stdout and done.stdout.count("catalog ") == 1
    assert_same_catalog(root, reference)


def test_two_shards_and_finalize_build_the_same_catalog(tmp_path: Path, scenes: Path,
                                                        reference: Path, tiny_checkpoint: Path) -> None:  # fmt: skip
    root = tmp_path / "c.dgtrs-catalog"
    base = [sys.executable, "-m", "dgtrs_geo.cli", "catalog", "index", str(scenes), "-o",
            str(root), "--model", str(tiny_checkpoint), "--device", "cpu", *SCALES]  # fmt: skip
    # One shard by flag, one as task 2 of a SLURM array numbered from 1.
    jobs = [
        subprocess.Popen([*base, "--shard", "0/2"], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}),
        subprocess.Popen(base, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "SLURM_ARRAY_TASK_ID": "2",
                              "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1"}),
    ]  # fmt: skip
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0]
    indexed = [int(out.split("indexed")[1].split()[0]) for out in outputs]
    assert sum(indexed) == 6 and min(indexed) > 0, outputs
    assert all("dgtrs-geo catalog finalize" in out for out in outputs)
    assert not (root / "CURRENT").exists()
    summary = finalize(root)
    assert summary.scenes == 6
    assert_same_catalog(root, reference)


def test_prune_drops_a_scene_whose_file_was_deleted(tmp_path: Path, tiny_model) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    for seed in range(3):
        make_scene(folder / f"tile_{seed}.tif", seed)
    root = tmp_path / "c.dgtrs-catalog"
    Catalog.build([folder], tiny_model, root, scales=(32, 64), scale_unit="px", device="cpu")
    (folder / "tile_1.tif").unlink()
    # Indexing the folder again keeps the deleted scene: one run's sources are not the catalog.
    assert len(Catalog.build([folder], tiny_model, root, device="cpu").index.scenes) == 3

    listed = cli("catalog", "prune", str(root), "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert "would drop 1 scene(s)" in listed.stdout and str(folder / "tile_1.tif") in listed.stdout
    assert len(Catalog.open(root).index.scenes) == 3

    done = cli("catalog", "prune", str(root))
    assert done.returncode == 0, done.stderr
    assert "dropped 1 scene(s)" in done.stdout
    index = Catalog.open(root).index
    assert sorted(Path(h).name for h in index.scenes["href"]) == ["tile_0.tif", "tile_2.tif"]
    parts = sorted(p.name.split("-")[0] for p in (root / "parts").glob("*.parquet"))
    assert parts == ["tile_0", "tile_2"]
