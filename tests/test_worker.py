"""The backend worker: its JSON-lines protocol, in process and as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from dgtrs_geo.localization import localize
from dgtrs_geo.worker import Worker

ORIGIN = (500000.0, 4100000.0)
PIXEL = 2.0


@pytest.fixture
def geotiff(tmp_path: Path) -> Path:
    """A 64 x 64 RGB uint8 GeoTIFF in UTM 33N, 2 m pixels, a bright square in the top-left."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60, size=(3, 64, 64), dtype=np.uint8)
    data[:, 4:20, 4:20] = 230
    path = tmp_path / "scene.tif"
    profile = dict(
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, PIXEL, PIXEL),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


class _Lines:
    """Feeds request lines to an in-process worker and collects its events."""

    def __init__(self) -> None:
        self.requests: queue.Queue[str | None] = queue.Queue()
        self.out = _Events()
        self.worker = Worker(self.out)
        self.thread = threading.Thread(target=self.worker.serve, args=(self._lines(),), daemon=True)
        self.thread.start()

    def _lines(self):
        while (line := self.requests.get()) is not None:
            yield line

    def send(self, request_id: str | None, op: str, **params) -> None:
        self.requests.put(json.dumps({"id": request_id, "op": op, "params": params}))

    def close(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=10)


class _Events(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict] = []
        self.cond = threading.Condition()

    def write(self, text: str) -> int:
        with self.cond:
            for line in text.splitlines():
                self.events.append(json.loads(line))
            self.cond.notify_all()
        return len(text)

    def wait_for(self, request_id: str | None, event: str = "result", timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.events:
                    if item["id"] == request_id and item["event"] in (event, "error"):
                        return item
                left = deadline - time.monotonic()
                assert left > 0, f"no {event} for {request_id}: {self.events}"
                self.cond.wait(left)


@pytest.fixture
def worker():
    lines = _Lines()
    yield lines
    lines.close()


def test_ready_ping_and_diagnostics(worker: _Lines) -> None:
    import dgtrs_geo
    from dgtrs_geo.localization.options import LocalizationOptions

    ready = worker.out.wait_for(None, "ready")
    assert ready["result"]["pid"] == os.getpid()
    # The version and every option with its default: what a client builds requests from.
    assert ready["result"]["version"] == dgtrs_geo.__version__ and ready["result"]["protocol"] == 2
    assert ready["result"]["options"] == LocalizationOptions().to_json()
    assert ready["result"]["options"]["scales"] == [256, 512, 768]
    # What the dock counts a query against before any model is loaded: DGTRS-CLIP's context.
    assert ready["result"]["context_length"] == 248
    worker.send("1", "ping")
    assert worker.out.wait_for("1")["result"]["version"] == ready["result"]["version"]
    worker.send("2", "diagnostics")
    diag = worker.out.wait_for("2")["result"]
    assert diag["device"] == "cpu" and diag["cuda_available"] is False
    # The folder models download to: the one cache location's "models" part.
    assert Path(diag["model_cache"]) == Path(os.environ["DGTRS_GEO_CACHE"]) / "models"
    assert diag["models_loaded"] == [] and diag["indexes_warm"] == 0


def test_count_tokens_without_a_model(worker: _Lines) -> None:
    worker.send("1", "count_tokens", text="a red roof")
    reply = worker.out.wait_for("1")["result"]
    # CLIP BPE: "a", "red", "roof" plus start and end tokens.
    assert reply == {"count": 5, "context_length": 248}
    worker.send("2", "count_tokens", text=" ".join(["house"] * 300))
    assert worker.out.wait_for("2")["result"]["count"] == 302


@pytest.mark.parametrize(
    ("line", "kind", "words"),
    [
        ("not json", "BadRequest", "not JSON"),
        ('{"id": "x", "op": "fly"}', "BadRequest", "unknown op 'fly'"),
        ('{"id": "x", "op": "count_tokens", "params": {}}', "BadRequest", '"text"'),
        ('{"id": "x", "op": "ping", "params": [1]}', "BadRequest", "JSON object"),
        ('{"id": "x", "op": "localize", "params": {"raster": "a.tif"}}', "BadRequest", "queries"),
        (
            '{"id": "x", "op": "index", "params": {"raster": "a.tif", "model": "m", '
            '"options": {"scales": [64], "extnt": [0, 0, 1, 1]}}}',
            "InputError",
            "unknown option(s) extnt",
        ),
        (
            '{"id": "x", "op": "index", "params": {"raster": "a.tif", "model": "m", '
            '"options": {}, "scales": [64]}}',
            "BadRequest",
            "both in params.options and flat",
        ),
    ],
)
def test_bad_requests_are_errors_not_crashes(
    worker: _Lines, line: str, kind: str, words: str
) -> None:
    worker.requests.put(line)
    request_id = None if line == "not json" else "x"
    error = worker.out.wait_for(request_id, "error")
    assert error["event"] == "error"
    assert error["error"]["type"] == kind and words in error["error"]["message"]
    worker.send("after", "ping")
    assert worker.out.wait_for("after")["event"] == "result"


def test_missing_raster_and_model_are_reported(
    worker: _Lines, tmp_path: Path, tiny_checkpoint
) -> None:
    worker.send(
        "1",
        "localize",
        raster=str(tmp_path / "nope.tif"),
        queries=["x"],
        model=str(tiny_checkpoint),
        options={"out_dir": str(tmp_path), "device": "cpu"},
    )
    error = worker.out.wait_for("1")["error"]
    assert error["type"] == "InputError" and "nope.tif" in error["message"]
    worker.send("2", "index", raster=str(tmp_path / "nope.tif"), model=str(tmp_path / "missing.pt"))
    error = worker.out.wait_for("2")["error"]
    assert error["type"] == "ModelError" and "missing.pt" in error["message"]
    if "class" in error:  # a model-specific subclass, reported under its family
        import dgtrs_geo.models as models
        from dgtrs_geo.errors import ModelError

        cls = next(getattr(m, error["class"]) for m in vars(models).values()
                   if hasattr(m, error["class"]))  # fmt: skip
        assert issubclass(cls, ModelError) and cls is not ModelError
    worker.send(
        "3", "index", raster=str(tmp_path / "nope.tif"), model=str(tiny_checkpoint),
        options={"smooth": -100, "scales": [64], "device": "cpu"},
    )  # fmt: skip
    error = worker.out.wait_for("3")["error"]
    assert error["type"] == "InputError" and "smooth (--smooth) must be >= 0" in error["message"]


def test_localize_then_warm_second_query(
    worker: _Lines, geotiff: Path, tiny_checkpoint, tmp_path
) -> None:
    options = {"device": "cpu", "scales": [16, 32], "index_dir": str(tmp_path / "idx")}
    common = dict(raster=str(geotiff), model=str(tiny_checkpoint))
    worker.send(
        "1", "localize", queries=["a bright square"],
        options={**options, "out_dir": str(tmp_path / "a"), "outputs": ["heatmap", "polygons"]},
        **common,
    )  # fmt: skip
    first = worker.out.wait_for("1")
    assert first["event"] == "result", first
    progress = [e for e in worker.out.events if e["id"] == "1" and e["event"] == "progress"]
    assert progress and all(0.0 <= e["fraction"] <= 1.0 for e in progress)
    assert progress[-1]["fraction"] == pytest.approx(1.0)
    stages = [e["stage"] for e in progress]
    assert stages[:2] == ["starting", "loading-model"] and "encoding" in stages
    assert stages.index("encoding") < stages.index("scoring") < stages.index("writing")
    assert "deprecations" not in first["result"]
    result = first["result"]
    assert result["index_warm"] is False and result["windows"] > 0
    (answer,) = result["results"]
    assert answer["query"] == "a bright square"
    with rasterio.open(answer["heatmap"]) as src:
        heat = src.read(1)
        assert src.crs.to_epsg() == 32633
        # The heatmap covers the raster exactly (cells may be coarser than pixels).
        assert src.bounds.left == pytest.approx(ORIGIN[0]) and src.bounds.top == pytest.approx(
            ORIGIN[1]
        )
        assert src.bounds.right == pytest.approx(ORIGIN[0] + 64 * PIXEL)
        assert src.bounds.bottom == pytest.approx(ORIGIN[1] - 64 * PIXEL)
    assert (
        np.isfinite(heat).all()
        and heat.min() == pytest.approx(0)
        # The worker is an adapter: the engine in-process, same options, gives the same map.
        and np.allclose(heat, localize(geotiff, "a bright square", tiny_checkpoint, device="cpu",
                                       scales=(16, 32), index_dir=str(tmp_path / "idx"))[0].heatmap,
                        atol=1e-6)
    )  # fmt: skip
    assert Path(answer["polygons"]).is_file() and answer["polygon_count"] >= 1
    # The centre of the heatmap's best cell (the grid spans the 128 m raster).
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    cell_x, cell_y = 64 * PIXEL / heat.shape[1], 64 * PIXEL / heat.shape[0]
    assert answer["best"] == pytest.approx(
        [ORIGIN[0] + (col + 0.5) * cell_x, ORIGIN[1] - (row + 0.5) * cell_y], abs=1e-3
    )

    worker.send(
        "2", "localize", queries=["dark ground"], options={**options, "out_dir": str(tmp_path / "b")},
        **common,
    )  # fmt: skip
    second = worker.out.wait_for("2")["result"]
    assert sorted(second["results"][0]["paths"]) == ["heatmap", "overlay", "polygons"]
    assert second["index_warm"] is True and second["windows"] == result["windows"]
    assert second["results"][0]["heatmap"] != answer["heatmap"]
    worker.send("3", "diagnostics")
    diag = worker.out.wait_for("3")["result"]
    assert diag["indexes_warm"] == 1 and len(diag["models_loaded"]) == 1
    worker.send("4", "count_tokens", text="a red roof", model=str(tiny_checkpoint))
    assert worker.out.wait_for("4")["result"] == {"count": 5, "context_length": 248}


def test_index_op_reuses_and_reports(
    worker: _Lines, geotiff: Path, tiny_checkpoint, tmp_path
) -> None:
    params = dict(
        raster=str(geotiff),
        model=str(tiny_checkpoint),
        options={"device": "cpu", "scales": [32], "index_dir": str(tmp_path / "idx")},
    )
    worker.send("1", "index", **params)
    built = worker.out.wait_for("1")["result"]
    assert built["warm"] is False and Path(built["index"]).is_dir()
    # 64 px, 32 px windows: the offset-0 grid starts at 0, 32 (2 x 2 windows); the offset-16 grid
    # at 16, 48 -> clamped to 32 (2 x 2), whose (32, 32) window repeats: 7 windows.
    assert built["windows"] == 7
    worker.send("2", "index", **params)
    assert worker.out.wait_for("2")["result"]["warm"] is True


def test_cancel_a_queued_job(worker: _Lines, geotiff: Path, tiny_checkpoint, tmp_path) -> None:
    params = dict(
        raster=str(geotiff),
        model=str(tiny_checkpoint),
        options={"device": "cpu", "scales": [16], "index_dir": str(tmp_path / "idx")},
    )
    worker.send("1", "index", **params)
    worker.send("2", "index", **params)
    worker.send("c", "cancel", target="2")
    assert worker.out.wait_for("c")["result"] == {"cancelled": True}
    assert worker.out.wait_for("1")["event"] == "result"
    error = worker.out.wait_for("2")
    assert error["event"] == "error" and error["error"]["type"] == "Cancelled"
    worker.send("d", "cancel", target="nothing")
    assert worker.out.wait_for("d")["result"] == {"cancelled": False}


def test_protocol_1_requests_still_work_with_deprecations(
    worker: _Lines, geotiff: Path, tiny_checkpoint, tmp_path
) -> None:
    # The 0.1 plugin's request: options flat in params, "extent" and "output_dir".
    extent = [ORIGIN[0] + 32, ORIGIN[1] - 96, ORIGIN[0] + 128, ORIGIN[1]]  # columns 16.., rows ..48
    worker.send(
        "1", "localize", raster=str(geotiff), queries=["a bright square"],
        model=str(tiny_checkpoint), device="cpu", bands=None, scales=[16], extent=extent,
        index_dir=str(tmp_path / "idx"), threshold=0.5, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    reply = worker.out.wait_for("1")
    assert reply["event"] == "result", reply
    assert reply["result"]["deprecations"] == [
        "options given flat in params: send them as params.options",
        "params.extent: send it as params.options.aoi",
        "params.output_dir: send it as params.options.out_dir",
    ]
    (answer,) = reply["result"]["results"]
    # Protocol 1 wrote a heatmap and polygons only, and named them at the top level too.
    assert sorted(answer["paths"]) == ["heatmap", "polygons"]
    assert answer["heatmap"] == answer["paths"]["heatmap"]
    assert Path(answer["heatmap"]).parent == tmp_path / "out"
    with rasterio.open(answer["heatmap"]) as src:
        assert src.bounds.left == pytest.approx(extent[0]) and src.bounds.top == pytest.approx(
            extent[3]
        )
        assert src.bounds.right == pytest.approx(extent[2])
        assert src.bounds.bottom == pytest.approx(extent[1])


# --- the real subprocess ------------------------------------------------------------------------


def test_cli_worker_subprocess_answers_and_exits_on_shutdown() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dgtrs_geo.cli", "worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready" and ready["result"]["pid"] == process.pid
        for request, check in [
            (
                {"id": "1", "op": "count_tokens", "params": {"text": "a red roof"}},
                {"count": 5, "context_length": 248},
            ),
            ({"id": "2", "op": "shutdown"}, {"stopped": True}),
        ]:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            reply = json.loads(process.stdout.readline())
            assert reply["id"] == request["id"] and reply["result"] == check
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_subprocess_keeps_stray_prints_off_the_protocol_and_exits_at_eof() -> None:
    # A print() inside the engine lands on stderr: fd 1 is pointed at stderr at start-up.
    code = (
        "import sys; import dgtrs_geo.worker as w; orig = w.Worker.diagnostics; "
        "w.Worker.diagnostics = lambda self: (print('noise'), orig(self))[1]; sys.exit(w.main())"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # communicate() closes stdin after the request: the worker must answer, then exit 0.
    out, err = process.communicate('{"id": "1", "op": "diagnostics"}\n', timeout=120)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["event"] for line in lines] == ["ready", "result"]
    assert "noise" in err and process.returncode == 0
