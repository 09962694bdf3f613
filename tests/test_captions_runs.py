"""Caption runs against a scripted chat-completions server on 127.0.0.1: steps, faults, resume."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgtrs_geo.captions import (
    count_clip_tokens,
    load_config,
    read_image_folder,
    read_manifest,
    run_captions,
    run_step,
)
from dgtrs_geo.captions.runner import _Asker, failed_path
from dgtrs_geo.cli import main

DATA = Path(__file__).parent / "data" / "captions"
sys.path.insert(0, str(DATA))
from scripted_server import ScriptedServer  # noqa: E402

SHORTS = [p.read_text().strip() for p in sorted((DATA / "images").glob("*.txt"))]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _config(server: ScriptedServer, **overrides: object):
    settings = {"concurrency": 3, "backoff_base": 0.01, "timeout": 5.0, "max_attempts": 4}
    return load_config(base_url=server.url, **{**settings, **overrides})


def _manifest(folder: Path, n: int) -> Path:
    """Write a manifest of ``n`` rows over one tile, each with its own long caption."""
    Image.new("RGB", (16, 16), (90, 120, 60)).save(folder / "tile.png")
    rows = [
        {
            "id": f"item-{i:02d}",
            "image": "tile.png",
            "caption_short": "x",
            "caption_long": f"Item {i} shows a field. A road runs beside it.",
        }
        for i in range(n)
    ]
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    shutil.copytree(DATA / "images", tmp_path / "images")
    return tmp_path / "images"


def test_long_step_writes_dgtrsd_rows(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.jsonl"
    with ScriptedServer() as server:
        summary = run_step("long", read_image_folder(images), out, _config(server), progress=False)
    assert (summary.written, summary.failed, summary.skipped) == (5, 0, 0)
    rows = _rows(out)
    assert sorted(row["id"] for row in rows) == sorted(
        f"scene_0{i}.{'tif' if i == 4 else 'png'}" for i in range(5)
    )
    for row in rows:
        # paths relative to the manifest's folder; each long caption answers its own hint
        assert row["image"] == f"images/{row['id']}"
        short = row["caption_short"]
        assert row["caption_long"].startswith(short[0].upper() + short[1:] + ". ")
        record = row["long_budget"]
        assert (record["asked_again"], record["cut"]) == (0, False)
        assert record["tokens"] == record["first_tokens"] == count_clip_tokens(row["caption_long"])
        assert record["tokens"] <= 248
        stamp = row["provenance"]["long"]
        assert stamp["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
        assert stamp["prompt_version"] == "long-v1" and stamp["backend"] == "openai"
        datetime.fromisoformat(stamp["time"])
    # the request carried the image as a base64 PNG data URL and the step's model settings
    request = server.requests[0]
    assert request["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and request["max_tokens"] == 512
    assert request["temperature"] == 0.2 and "response_format" not in request
    part = request["messages"][1]["content"][0]
    assert part["type"] == "image_url"
    assert part["image_url"]["url"].startswith("data:image/png;base64,")


def test_injected_faults_are_retried(images: Path, tmp_path: Path) -> None:
    faults = {
        SHORTS[0]: ["429", "429"],
        SHORTS[1]: ["500"],
        SHORTS[2]: ["slow"],
        SHORTS[3]: ["badjson"],
        SHORTS[4]: ["malformed", "malformed"],
    }
    out = tmp_path / "long.jsonl"
    # timeout and delay far apart, so a busy machine cannot turn a normal answer into a timeout
    with ScriptedServer(faults, slow_seconds=3.0) as server:
        config = _config(server, timeout=1.0)
        summary = run_step("long", read_image_folder(images), out, config, progress=False)
    assert (summary.written, summary.failed) == (5, 0)
    assert summary.counts == {"requests": 12, "transport": 5, "malformed": 2}
    assert server.hits == {SHORTS[0]: 3, SHORTS[1]: 2, SHORTS[2]: 2, SHORTS[3]: 2, SHORTS[4]: 3}
    for row in _rows(out):
        short = row["caption_short"]
        assert row["caption_long"].startswith(short[0].upper() + short[1:])


def test_hopeless_item_is_logged_and_redone_by_the_next_run(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.jsonl"
    with ScriptedServer({SHORTS[2]: ["500"] * 3}) as server:
        summary = run_step(
            "long", read_image_folder(images), out, _config(server, max_attempts=3), progress=False
        )
    assert (summary.written, summary.failed) == (4, 1)
    failed = _rows(failed_path(out))
    assert [row["id"] for row in failed] == ["scene_02.png"]
    assert "gave up after 3 attempts" in failed[0]["error"] and "HTTP 500" in failed[0]["error"]
    with ScriptedServer() as server:
        summary = run_step("long", read_image_folder(images), out, _config(server), progress=False)
    assert (summary.skipped, summary.written, summary.failed) == (4, 1, 0)
    assert len(server.requests) == 1
    assert not failed_path(out).exists()  # the list names the last run's failures only
    ids = [item.id for item in read_image_folder(images)]
    assert sorted(row["id"] for row in _rows(out)) == ids


@pytest.mark.parametrize(
    ("overflow", "script", "asked", "cut"),
    [
        ("retry", ["toolong"], 1, False),
        ("retry", ["toolong"] * 3, 2, True),
        ("cut", ["toolong"], 0, True),
        ("retry", ["toolong"] + ["malformed"] * 4, 1, True),  # no usable shorter answer
    ],
)
def test_long_captions_over_budget(
    images: Path, tmp_path: Path, overflow: str, script: list[str], asked: int, cut: bool
) -> None:
    out = tmp_path / "long.jsonl"
    items = [item for item in read_image_folder(images) if item.id == "scene_00.png"]
    with ScriptedServer({SHORTS[0]: script}) as server:
        run_step("long", items, out, _config(server, overflow=overflow), progress=False)
    (row,) = _rows(out)
    record = row["long_budget"]
    assert record["first_tokens"] > 248
    assert (record["asked_again"], record["cut"]) == (asked, cut)
    assert record["tokens"] <= 248 and row["caption_long"].endswith(".")
    if asked:
        # the follow-up carried the model's own answer and the measured overflow
        follow_up = server.requests[1]["messages"]
        assert follow_up[-2]["role"] == "assistant"
        assert (
            f"has {record['first_tokens']} CLIP tokens but the limit is 248"
            in (follow_up[-1]["content"])
        )


def test_fatal_server_answers_stop_the_run(images: Path, tmp_path: Path) -> None:
    items = read_image_folder(images)
    with ScriptedServer({"": ["401"] * 10}) as server:
        with pytest.raises(RuntimeError, match="API key"):
            run_step("long", items, tmp_path / "a.jsonl", _config(server), progress=False)
    with ScriptedServer() as server:
        config = load_config(base_url=server.url.removesuffix("/v1"), concurrency=2)
        with pytest.raises(RuntimeError, match="HTTP 404.*base_url"):
            run_step("long", items, tmp_path / "b.jsonl", config, progress=False)


def test_a_step_may_have_its_own_server(images: Path, tmp_path: Path) -> None:
    items = read_image_folder(images)[:1]
    with ScriptedServer() as run_server, ScriptedServer() as step_server:
        config = _config(run_server)
        config.step("long").base_url = step_server.url
        run_step("long", items, tmp_path / "o.jsonl", config, progress=False)
    assert len(step_server.requests) == 1 and not run_server.requests


def test_json_mode_asks_for_a_json_object(images: Path, tmp_path: Path) -> None:
    items = read_image_folder(images)[:1]
    with ScriptedServer() as server:
        config = _config(server, json_mode=True)
        run_step("long", items, tmp_path / "o.jsonl", config, progress=False)
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_api_key_is_sent_from_the_environment(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DGTRS_TEST_KEY", "sk-test")
    items = read_image_folder(images)[:2]
    with ScriptedServer() as server:
        config = _config(server, api_key_env="DGTRS_TEST_KEY")
        run_step("long", items, tmp_path / "o.jsonl", config, progress=False)
    assert server.auth == {"Bearer sk-test"}


def test_dry_run_prints_prompts_and_sends_nothing(images: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    out = tmp_path / "long.jsonl"
    with ScriptedServer() as server:
        run_step("long", read_image_folder(images), out, _config(server), dry_run=2, stream=stream)
    printed = stream.getvalue()
    assert not server.requests and not out.exists()
    assert printed.count("===== long-v1 |") == 2
    assert f'"{SHORTS[0]}"' in printed and f'"{SHORTS[1]}"' in printed
    assert f"<image {images.resolve() / 'scene_00.png'}>" in printed
    assert SHORTS[2] not in printed


def test_masks_step_captions_the_layout(tmp_path: Path) -> None:
    out = tmp_path / "masks.jsonl"
    with ScriptedServer() as server:
        summary = run_captions(
            "masks",
            DATA / "images",
            out,
            _config(server),
            masks=DATA / "masks",
            classes=DATA / "classes.csv",
            ignore=[0],
            progress=False,
        )
    assert summary.written == 5
    row = next(r for r in _rows(out) if r["id"] == "scene_01.png")
    assert row["caption_short"] == "an image of tree and water"
    assert row["caption_long"] == (
        "The tree covers 88.9% of the image, 1 region, spread across the image. "
        "The water covers 11.1% of the image, 1 region, in the centre."
    )
    assert row["mask"] == str((DATA / "masks" / "scene_01.png").resolve())
    # the masks step is text-only by default: no image in the request
    assert all(isinstance(m["content"], str) for r in server.requests for m in r["messages"])


def test_short_then_score_manifest_loads_in_dgtrsd(tmp_path: Path) -> None:
    from dgtrs_geo.datasets.dgtrsd import DGTRSD

    shutil.copytree(DATA / "images", tmp_path / "images")
    shutil.copy(DATA / "manifest.jsonl", tmp_path / "manifest.jsonl")
    with ScriptedServer() as server:
        config = _config(server)
        run_captions(
            "short", tmp_path / "manifest.jsonl", tmp_path / "short.jsonl", config, progress=False
        )
        run_captions(
            "score", tmp_path / "short.jsonl", tmp_path / "dgtrsd.jsonl", config, progress=False
        )
    rows = {row["id"]: row for row in _rows(tmp_path / "dgtrsd.jsonl")}
    row = rows["images/scene_00.png"]
    assert row["caption_short"] == "a red house stands in the top-left corner"
    assert row["caption_short_original"] == "a red house beside a grey road"
    assert row["scores"] == {
        "accuracy": 4,
        "detail": 3,
        "consistency": 5,
        "fluency": 4,
        "overall": 4.0,
    }
    assert set(row["provenance"]) == {"short", "score"}
    assert row["split"] == "train"

    dataset = DGTRSD(root=tmp_path, split="train", manifest="dgtrsd.jsonl")
    assert len(dataset) == 3
    by_caption = {rows[k]["caption_long"]: rows[k] for k in rows}
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, 48, 48)
        assert sample["caption_short"] == by_caption[sample["caption_long"]]["caption_short"]
    assert len(DGTRSD(root=tmp_path, split="val", manifest="dgtrsd.jsonl")) == 2


def test_short_step_fails_rows_without_long_caption(images: Path, tmp_path: Path) -> None:
    with ScriptedServer() as server:
        summary = run_step(
            "short",
            read_image_folder(images),
            tmp_path / "s.jsonl",
            _config(server),
            progress=False,
        )
    assert (summary.written, summary.failed) == (0, 5) and not server.requests
    assert "needs a caption_long" in _rows(tmp_path / "s.failed.jsonl")[0]["error"]


def test_cli_runs_and_resumes(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "long.jsonl"
    with ScriptedServer() as server:
        argv = ["captions", "long", str(images), "-o", str(out), "--base-url", server.url]
        argv += ["--concurrency", "2", "--model", "my-vl", "--no-progress"]
        assert main(argv) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(argv) == 0
        second = json.loads(capsys.readouterr().out)
        assert main([*argv[:-1], "--dry-run", "1"]) == 0
        printed = capsys.readouterr().out
    assert (first["written"], first["skipped"]) == (5, 0)
    assert (second["written"], second["skipped"]) == (0, 5)
    assert {request["model"] for request in server.requests} == {"my-vl"}
    assert len(server.requests) == 5 and printed.count("=====") == 1
    assert main(["captions", "masks", str(images), "-o", str(out)]) == 2
    assert "class table" in capsys.readouterr().err
    assert main(["captions", "score", str(out), "-o", str(out)]) == 2
    assert "is the input" in capsys.readouterr().err


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    n = 60
    manifest = _manifest(tmp_path, n)
    out = tmp_path / "out.jsonl"
    with ScriptedServer(latency=0.05) as server:
        argv = [sys.executable, "-m", "dgtrs_geo.cli", "captions", "short", str(manifest)]
        argv += ["-o", str(out), "--base-url", server.url, "--concurrency", "2", "--no-progress"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 10:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
        written_before = len(_rows(out))
        assert 10 <= written_before < n
        summary = run_captions(
            "short", manifest, out, load_config(base_url=server.url), progress=False
        )
    assert summary.skipped == written_before and summary.written == n - written_before
    result = _rows(out)
    assert sorted(row["id"] for row in result) == [f"item-{i:02d}" for i in range(n)]
    for row in result:
        assert row["caption_short"] == f"item {int(row['id'][5:])} shows a field"
    # at most the requests in flight at the kill were sent twice
    assert n <= len(server.requests) <= n + 2 * 2


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    items = read_manifest(_manifest(tmp_path, 12))
    with ScriptedServer(latency=0.2) as server:
        summary = run_step(
            "short", items, tmp_path / "o.jsonl", _config(server, concurrency=3), progress=False
        )
    assert summary.written == 12
    assert server.max_in_flight == 3


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    items = read_manifest(_manifest(tmp_path, 1))
    with ScriptedServer({"Item 0": ["429"]}, retry_after="0.4") as server:
        config = _config(server, backoff_base=0.001)
        summary = run_step("short", items, tmp_path / "o.jsonl", config, progress=False)
    assert summary.written == 1 and summary.counts["transport"] == 1
    assert summary.seconds >= 0.4


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    config = load_config(backoff_base=1.0, backoff_max=5.0)
    asker = _Asker(backend=None, step=None, config=config, stats=Counter())
    for retry, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        delays = [asker._backoff(retry, None) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert asker._backoff(0, 30.0) == 5.0  # a server's Retry-After is capped too
    assert asker._backoff(3, 0.25) == 0.25


def test_progress_bar_shows_count_and_rate(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with ScriptedServer() as server:
        argv = ["captions", "long", str(images), "-o", str(tmp_path / "o.jsonl")]
        assert main([*argv, "--base-url", server.url]) == 0
    err = capsys.readouterr().err
    assert "long: 100%" in err and "5/5" in err and "row/s" in err


def test_user_geopackage_features_become_captioned_chips(tmp_path: Path) -> None:
    user = Path(__file__).parent / "data" / "user_captions"
    out = tmp_path / "user.jsonl"
    with ScriptedServer() as server:
        argv = ["captions", "long", str(user / "captions.gpkg"), "-o", str(out)]
        argv += ["--rasters", str(user), "--chip-size", "16", "--base-url", server.url]
        assert main([*argv, "--no-progress"]) == 0
    rows = {row["caption_short"]: row for row in _rows(out)}
    assert set(rows) == {"a red roof", "a blue pool", "a yellow field", "a white tank"}
    red = rows["a red roof"]
    assert red["id"].startswith("captions.gpkg#")
    assert red["caption_long"].startswith("A red roof. ")
    assert red["crs"] == "EPSG:32633"
    xmin, ymin, xmax, ymax = red["bounds"]
    # the roof is the 8 m square centred 16 m east and 16 m south of tile a's corner
    assert ((xmin + xmax) / 2, (ymin + ymax) / 2) == pytest.approx((500016.0, 4650048.0))
    assert xmax - xmin == pytest.approx(16.0)
    chip = np.asarray(Image.open(tmp_path / red["image"]))
    assert red["image"].startswith("chips/") and chip.shape == (16, 16, 3)
    assert tuple(chip[8, 8]) == (255, 0, 0) and tuple(chip[0, 0]) == (40, 40, 40)


def test_replaced_captions_are_kept_as_originals(tmp_path: Path) -> None:
    items = read_manifest(DATA / "manifest.jsonl")[:1]
    with ScriptedServer() as server:
        run_step("long", items, tmp_path / "o.jsonl", _config(server), progress=False)
    (row,) = _rows(tmp_path / "o.jsonl")
    assert row["caption_long_original"] == items[0].fields["caption_long"]
    assert row["caption_long"].startswith("A red house beside a grey road. ")
    assert "caption_short_original" not in row  # the long step leaves the short caption alone


def test_cli_exit_code_says_some_items_failed(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with ScriptedServer({SHORTS[1]: ["500"] * 2}) as server:
        argv = ["captions", "long", str(images), "-o", str(tmp_path / "o.jsonl")]
        argv += ["--base-url", server.url, "--max-attempts", "2", "--no-progress"]
        assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["written"], summary["failed"]) == (4, 1)
