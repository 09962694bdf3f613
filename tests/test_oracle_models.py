"""Models: downloads from a real HTTP server, the activation default, CLI embeddings equal the API's.

The download tests serve files from ``http.server`` on 127.0.0.1 in a thread (no network): the
bytes travel through ``requests``, the progress bar, the ``.partial`` file and the rename exactly
as a real download would.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import dgtrs_geo
from dgtrs_geo.cli import main
from dgtrs_geo.models import REGISTRY, create_clip, save_checkpoint
from dgtrs_geo.models.architecture import architecture_config
from dgtrs_geo.models.registry import ModelEntry, download_weights, weights_path


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                server.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    # A proxy set in the environment must not intercept the local server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    (tmp_path / "served").mkdir()
    running = _Server(tmp_path / "served")
    yield running
    running.close()


def _entry(server: _Server, filename: str, sha256: str | None, fmt: str = "dgtrs") -> ModelEntry:
    return ModelEntry(
        name="tiny-remote",
        url=f"{server.url}/{filename}",
        filename=filename,
        format=fmt,  # type: ignore[arg-type]
        sha256=sha256,
    )


@pytest.fixture
def served_tiny(server, tiny_checkpoint, tmp_path, monkeypatch) -> tuple[ModelEntry, bytes]:
    """The tiny checkpoint served on 127.0.0.1 as the registered name "tiny-remote", not cached."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    payload = tiny_checkpoint.read_bytes()
    (tmp_path / "served" / "tiny.pt").write_bytes(payload)
    entry = _entry(server, "tiny.pt", hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    return entry, payload


def test_download_by_name_is_checked_cached_and_loads(
    served_tiny, server, tiny_model, tmp_path
) -> None:
    entry, payload = served_tiny
    model = dgtrs_geo.load_model("tiny-remote")
    # The bytes landed in the models cache, whole, with no partial file beside them.
    target = tmp_path / "cache" / "models" / "tiny.pt"
    assert weights_path(entry) == target and target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.pt"]
    assert server.requests == ["/tiny.pt"]
    texts = ["a harbour with ships", "an empty parking lot"]
    torch.testing.assert_close(model.encode_text(texts), tiny_model.encode_text(texts))
    assert model.model_id.startswith("tiny-remote-")
    # Cached: the second load asks the server for nothing.
    dgtrs_geo.load_model("tiny-remote")
    assert download_weights(entry, progress=False) == target
    assert server.requests == ["/tiny.pt"]


def test_sha256_mismatch_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch) -> None:
    from dgtrs_geo.models import WeightsUnavailableError

    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "served" / "weights.pt").write_bytes(b"not the published bytes" * 1000)
    published = hashlib.sha256(b"the published bytes").hexdigest()
    entry = _entry(server, "weights.pt", published)
    with pytest.raises(
        WeightsUnavailableError, match=f"sha256 [0-9a-f]{{64}} != published {published}"
    ):
        download_weights(entry, progress=False)
    assert server.requests == ["/weights.pt"]
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir()
    )
    # A missing file (404) is a download failure that names the URL.
    with pytest.raises(WeightsUnavailableError, match="missing.pt"):
        download_weights(_entry(server, "missing.pt", None), progress=False)


def test_worker_reports_the_download_in_percent_before_loading(served_tiny) -> None:
    import io

    from dgtrs_geo.worker import Worker

    entry, payload = served_tiny
    reported: list[tuple[int, int | None]] = []
    download_weights(
        entry, progress=False, report=lambda done, total: reported.append((done, total))
    )
    # One call per chunk of 1 MiB: bytes so far, growing to the whole file, and its size.
    chunks = -(-len(payload) // 2**20)
    assert reported == [(min((i + 1) * 2**20, len(payload)), len(payload)) for i in range(chunks)]
    weights_path(entry).unlink()

    events: list[tuple[float, str, str]] = []
    Worker(io.StringIO()).session(entry.name, "cpu", lambda *event: events.append(event))
    stages = [stage for _, _, stage in events]
    assert stages[0] == "downloading" and stages[-1] == "loading-model"
    assert set(stages[:-1]) == {"downloading"}
    fraction, message, _ = events[-2]
    assert fraction == 1.0 and message == "downloading weights 100 %"
    assert weights_path(entry).read_bytes() == payload
    # Cached now: a new worker goes straight to loading.
    events.clear()
    Worker(io.StringIO()).session(entry.name, "cpu", lambda *event: events.append(event))
    assert [stage for _, _, stage in events] == ["loading-model"]


def _independent_clip(state: dict[str, torch.Tensor], quick_gelu: bool) -> torch.nn.Module:
    """open_clip's own CLIP class with the tiny config, built without the project's loader."""
    config = architecture_config("dgtrs-tiny")
    config["text_cfg"]["context_length"] = state["positional_embedding"].shape[0]
    config["quick_gelu"] = quick_gelu
    clip = open_clip.CLIP(**config)
    clip.load_state_dict(state)
    return clip.eval()


def test_open_clip_checkpoints_default_to_gelu_and_dgtrs_to_quickgelu(tmp_path) -> None:
    torch.manual_seed(3)
    clip = create_clip("dgtrs-tiny")
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    as_open_clip = save_checkpoint(clip, tmp_path / "plain.pt", format="open_clip")
    as_dgtrs = save_checkpoint(clip, tmp_path / "release.pt", format="dgtrs")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = {}
    for quick in (False, True):
        with torch.no_grad():
            features = _independent_clip(state, quick).encode_image(images)
        expected[quick] = torch.nn.functional.normalize(features, dim=-1)
    # The two activations give different embeddings: the comparison below can fail.
    assert (expected[False] - expected[True]).abs().max() > 1e-4
    plain = dgtrs_geo.load_model(as_open_clip)
    torch.testing.assert_close(plain.encode_image(images), expected[False], atol=1e-6, rtol=0)
    release = dgtrs_geo.load_model(as_dgtrs)
    torch.testing.assert_close(release.encode_image(images), expected[True], atol=1e-6, rtol=0)
    forced = dgtrs_geo.load_model(as_open_clip, quick_gelu=True)
    torch.testing.assert_close(forced.encode_image(images), expected[True], atol=1e-6, rtol=0)


def test_embed_image_equals_encode_pil_and_a_blank_image_differs(
    tiny_checkpoint, tiny_model, tmp_path, capsys
) -> None:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    scene[5:25, 10:30] = (220, 30, 30)
    Image.fromarray(scene).save(tmp_path / "scene.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "blank.png")
    # A palette image: the command converts to RGB as encode_pil's callers do.
    Image.fromarray(scene).convert("P").save(tmp_path / "palette.png")
    args = ["embed-image", str(tmp_path / "scene.png"), str(tmp_path / "blank.png")]
    assert main([*args, str(tmp_path / "palette.png"), "--model", str(tiny_checkpoint)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["model_id"] == tiny_model.model_id and payload["image_size"] == 32
    assert [item["image"] for item in payload["items"]] == [
        str(tmp_path / n) for n in ("scene.png", "blank.png", "palette.png")
    ]
    got = torch.tensor([item["embedding"] for item in payload["items"]])
    with Image.open(tmp_path / "palette.png") as palette:
        images = [
            Image.fromarray(scene),
            Image.new("RGB", (50, 40)),
            palette.convert("RGB"),
        ]
    expected = tiny_model.encode_pil(images)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got[0] - got[1]).abs().max() > 1e-3  # the blank image is not the scene


def test_embed_text_equals_encode_text(tiny_checkpoint, tiny_model, capsys) -> None:
    texts = ["a harbour with three ships", "a forest", "A FOREST"]
    assert main(["embed-text", *texts, "--model", str(tiny_checkpoint)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["model_id"] == tiny_model.model_id and payload["context_length"] == 248
    got = torch.tensor([item["embedding"] for item in payload["items"]])
    torch.testing.assert_close(got, tiny_model.encode_text(texts), atol=1e-6, rtol=0)
    assert [item["text"] for item in payload["items"]] == texts
    # [SOT] + one token per word + [EOT]; the tokenizer lower-cases.
    assert [item["tokens"] for item in payload["items"]] == [7, 4, 4]
    assert (got[0] - got[1]).abs().max() > 1e-3
    torch.testing.assert_close(got[1], got[2])
