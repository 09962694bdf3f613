"""The catalog command in real processes: exit codes, SIGKILL and resume, DDP, shards, /vsicurl/.

Every catalog made here is compared with one built in this process from the same scenes: same
scenes, same windows, same embeddings to 1e-6, whatever the number of processes or interruptions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from dgtrs_geo.catalog import Catalog
from dgtrs_geo.catalog.finalize import finalize

pytestmark = pytest.mark.slow

SCALES = ("--scales", "32", "64", "--scale-unit", "px")

#: A static file server that honours HTTP range requests, as object stores do. It runs in its own
#: process: GDAL holds the GIL while it opens a file, so a server thread in the test process
#: would never answer.
SERVER = r"""
import os, re, sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class Ranges(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        start, end = 0, size - 1
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2) or size - 1), size - 1)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        file = open(path, "rb")
        file.seek(start)
        self.remaining = end - start + 1
        return file

    def copyfile(self, source, destination):
        destination.write(source.read(self.remaining))

server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Ranges, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


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


def test_a_killed_run_resumes_with_each_scene_once(tmp_path: Path, scenes: Path,
                                                   reference: Path, tiny_checkpoint: Path) -> None:  # fmt: skip
    root = tmp_path / "c.dgtrs-catalog"
    args = ["catalog", "index", str(scenes), "-o", str(root), "--model", str(tiny_checkpoint),
            "--device", "cpu", *SCALES]  # fmt: skip
    # Batches of one window make the run slow enough to be killed in the middle of it.
    run = subprocess.Popen([sys.executable, "-m", "dgtrs_geo.cli", *args, "--batch-size", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list(root.glob("scenes/*.json"))) < 2 and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
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


def _serve(folder: Path):
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(folder)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    return server, int(server.stdout.readline())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cog_over_http_is_indexed_and_unreachable_hrefs_are_reported(
    tmp_path: Path, tiny_model
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    local = make_scene(tmp_path / "local.tif", seed=3)
    rasterio.shutil.copy(local, www / "scene.tif", driver="COG")
    items = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "stac_version": "1.0.0", "id": "remote-scene", "geometry": None,
        "properties": {"datetime": "2024-07-01T00:00:00Z"}, "links": [],
        "assets": {"visual": {"href": "scene.tif"}},
    }]}  # fmt: skip
    (www / "items.json").write_text(json.dumps(items))
    server, port = _serve(www)
    try:
        base = f"http://127.0.0.1:{port}"
        sources = [f"{base}/items.json", f"{base}/missing.tif",
                   f"http://127.0.0.1:{_closed_port()}/scene.tif", local]  # fmt: skip
        catalog = Catalog.build(sources, tiny_model, tmp_path / "c.dgtrs-catalog",
                                scales=(32, 64), scale_unit="px", device="cpu")  # fmt: skip
    finally:
        server.kill()
        server.wait()
    summary = catalog.summary
    assert summary.count("indexed") == 2
    errors = {f.source: f.error for f in summary.failures}
    assert set(errors) == {f"{base}/missing.tif", sources[2]}
    assert "HTTP 404" in errors[f"{base}/missing.tif"]
    assert "cannot reach" in errors[sources[2]]
    index = catalog.index
    by_href = {row.href: row for row in index.scenes.itertuples()}
    remote, near = by_href[f"{base}/scene.tif"], by_href[str(local.resolve())]
    assert remote.item_id == "remote-scene" and remote.date.startswith("2024-07-01")
    # Read through range requests, the remote copy gives the local file's windows, exactly.
    np.testing.assert_array_equal(
        index.embeddings[remote.row_start : remote.row_stop],
        index.embeddings[near.row_start : near.row_stop],
    )
