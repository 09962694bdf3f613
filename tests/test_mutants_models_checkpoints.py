"""Tests written from the mutation run on ``dgtrs_geo/models/checkpoints.py`` and ``registry.py``.

Each pins a behaviour a surviving mutant changed; benchmarks/results/mutation-triage.md lists the
mutants each kills and the equivalent ones. Downloads come from the 127.0.0.1 server of
``test_oracle_models`` (no network).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import re
import threading
import zipfile
from pathlib import Path

import pytest
import requests
import torch
from test_oracle_models import _entry, server  # noqa: F401 - ``server`` is a fixture
from torch import nn

from dgtrs_geo.errors import InputError, OutputError
from dgtrs_geo.models import REGISTRY, WeightsUnavailableError
from dgtrs_geo.models.checkpoints import (
    CheckpointError,
    check_finite,
    detect_format,
    fold_dgtrs_state_dict,
    plain_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from dgtrs_geo.models.kps import freeze_positional_prefix
from dgtrs_geo.models.registry import download_weights, registry_status


def _table(rows: int, width: int = 2, start: float = 0.0) -> torch.Tensor:
    return torch.arange(rows * width, dtype=torch.float32).reshape(rows, width) + start


def _retag_as_cuda(src: Path, dst: Path) -> None:
    """Copy a torch zip archive, recording its tensors as saved on ``cuda:0`` (as a GPU run does)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
                assert b"cuda:0" in data
            zout.writestr(info, data)


class _Evil:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


# --- checkpoints: reading -------------------------------------------------------------------


def test_foreign_file_message_names_what_was_expected(tmp_path) -> None:
    """A text file is refused with the exact message naming the two accepted layouts."""
    path = tmp_path / "notes.pt"
    path.write_text("not weights")
    expected = (
        f"{path} is not a PyTorch checkpoint (it starts with b'not ', expected a zip archive "
        "or a pickle written by torch.save)"
    )
    with pytest.raises(CheckpointError, match=f"^{re.escape(expected)}$"):
        read_checkpoint(path)


def test_unsafe_pickle_is_refused_even_when_the_environment_allows_unsafe_loads(
    tmp_path, monkeypatch, capsys
) -> None:
    """weights_only=True is explicit: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot switch it off."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weights": _Evil()}))
    start = (
        f"{path} is a pickle that carries Python objects besides tensors; it was refused because "
        "loading it could run code. Expected a state dict of tensors (re-save it with "
        "torch.save(model.state_dict(), path)). Detail: "
    )
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    assert str(refused.value).startswith(start) and len(str(refused.value)) > len(start)
    assert "this pickle runs code" not in capsys.readouterr().out


def test_truncated_file_message_says_to_download_again(tmp_path) -> None:
    """A cut archive ends its message with the advice to download again (exact wording)."""
    torch.save({"positional_embedding": _table(50)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(tmp_path / "cut.pt")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'cut.pt'} is truncated or corrupt")
    assert message.endswith(". Download it again (a partial download leaves such a file).")


def test_weights_saved_on_a_gpu_load_on_the_cpu(tmp_path) -> None:
    """A state dict and a TorchScript archive whose tensors were saved on cuda:0 read onto the CPU."""
    state = {"positional_embedding": _table(4), "text_projection": _table(2, start=10)}
    torch.save(state, tmp_path / "cpu.pt")
    _retag_as_cuda(tmp_path / "cpu.pt", tmp_path / "gpu.pt")
    read, fmt = read_checkpoint(tmp_path / "gpu.pt")
    assert fmt == "open_clip" and set(read) == set(state)
    for key, value in state.items():
        assert read[key].device.type == "cpu" and torch.equal(read[key], value)

    class Scripted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positional_embedding = nn.Parameter(_table(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.positional_embedding

    torch.jit.script(Scripted()).save(str(tmp_path / "jit-cpu.pt"))
    _retag_as_cuda(tmp_path / "jit-cpu.pt", tmp_path / "jit-gpu.pt")
    read, fmt = read_checkpoint(tmp_path / "jit-gpu.pt")
    assert fmt == "openai" and list(read) == ["positional_embedding"]
    assert read["positional_embedding"].device.type == "cpu"
    assert torch.equal(read["positional_embedding"], _table(3))


def test_detect_format_by_keys() -> None:
    """Either text key marks open_clip; "state_dict" alone (no Lightning marker) is no format."""
    assert detect_format({"text_projection": torch.zeros(1)}) == "open_clip"
    assert detect_format({"positional_embedding": torch.zeros(1)}) == "open_clip"
    assert detect_format({"state_dict": {}, "hyper_parameters": {}}) == "lightning"
    assert detect_format({"state_dict": {}, "pytorch-lightning_version": "2"}) == "lightning"
    tail = "; expected a DGTRS/Long-CLIP, open_clip, OpenAI CLIP or dgtrs-geo Lightning checkpoint"
    with pytest.raises(CheckpointError) as none:
        detect_format({"state_dict": {}, "epoch": 1})
    assert str(none.value) == "no CLIP weights found (first keys: state_dict, epoch)" + tail
    with pytest.raises(CheckpointError) as none:
        detect_format({f"k{i}": i for i in range(7)})
    assert str(none.value) == "no CLIP weights found (first keys: k0, k1, k2, k3, k4)" + tail
    with pytest.raises(CheckpointError) as none:
        detect_format({})
    assert str(none.value) == "no CLIP weights found (first keys: none)" + tail


def test_fold_refuses_missing_or_mismatched_tables_with_exact_messages() -> None:
    """The two DGTRS table errors name the missing key, or both shapes."""
    with pytest.raises(CheckpointError) as missing:
        fold_dgtrs_state_dict({"positional_embedding_res": _table(4)})
    assert str(missing.value) == (
        "DGTRS checkpoint lacks 'positional_embedding': if the file is another format, leave the "
        "format to detection"
    )
    with pytest.raises(CheckpointError) as mismatch:
        fold_dgtrs_state_dict(
            {"positional_embedding": _table(4), "positional_embedding_res": _table(5)}
        )
    assert str(mismatch.value) == (
        "'positional_embedding' (4, 2) and 'positional_embedding_res' (5, 2) must have the same shape"
    )


def _save_lightning(path: Path, state: dict, **extra) -> Path:
    torch.save({"state_dict": state, **extra}, path)
    return path


def test_lightning_training_checkpoint_folds_the_frozen_prefix(tmp_path) -> None:
    """model.* weights lose the prefix; the parametrized table becomes cat(prefix, original[3:])
    (3 prefix rows of width 2: rows and width told apart)."""
    original, prefix = _table(6), _table(3, start=100)
    state = {
        "model.parametrizations.positional_embedding.original": original,
        "model.parametrizations.positional_embedding.0.prefix": prefix,
        "model.text_projection": _table(2, start=50),
        "teacher.weight": torch.ones(3),
    }
    path = _save_lightning(tmp_path / "last.ckpt", state, **{"pytorch-lightning_version": "2.6"})
    read, fmt = read_checkpoint(path)
    assert fmt == "lightning"
    assert sorted(read) == ["positional_embedding", "text_projection"]
    expected = torch.tensor(
        [[100.0, 101.0], [102.0, 103.0], [104.0, 105.0], [6.0, 7.0], [8.0, 9.0], [10.0, 11.0]]
    )
    assert torch.equal(read["positional_embedding"], expected)
    assert torch.equal(read["text_projection"], _table(2, start=50))


def test_lightning_table_without_a_prefix_is_read_as_is(tmp_path) -> None:
    """A parametrized table with no prefix buffer; a checkpoint marked only by hyper_parameters."""
    state = {"model.parametrizations.positional_embedding.original": _table(5)}
    path = _save_lightning(tmp_path / "a.ckpt", state, hyper_parameters={"lr": 1e-4})
    read, fmt = read_checkpoint(path)
    assert fmt == "lightning" and list(read) == ["positional_embedding"]
    assert torch.equal(read["positional_embedding"], _table(5))


def test_lightning_checkpoint_without_model_weights_is_refused(tmp_path) -> None:
    """No model.* key: the exact message says it is not a DGTRSCLIPTask checkpoint."""
    path = _save_lightning(
        tmp_path / "b.ckpt", {"teacher.weight": torch.ones(2)}, hyper_parameters={}
    )
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    assert str(refused.value) == (
        "Lightning checkpoint has no 'model.*' weights: not a DGTRSCLIPTask checkpoint"
    )


def test_a_format_forced_on_a_file_of_another_format_is_a_checkpoint_error(tmp_path) -> None:
    """Lightning forced on a plain state dict, DGTRS forced on an open_clip file: no KeyError."""
    path = tmp_path / "open_clip.pt"
    torch.save({"positional_embedding": _table(3), "text_projection": _table(2)}, path)
    fix = "if the file is another format, leave the format to detection"
    with pytest.raises(CheckpointError) as lightning:
        read_checkpoint(path, "lightning")
    assert str(lightning.value) == f"not a Lightning checkpoint (no 'state_dict' dictionary): {fix}"
    with pytest.raises(CheckpointError) as dgtrs:
        read_checkpoint(path, "dgtrs")
    assert str(dgtrs.value) == f"DGTRS checkpoint lacks 'positional_embedding_res': {fix}"


def test_read_checkpoint_errors_have_exact_messages(tmp_path) -> None:
    """Unknown format, a non-dict payload, non-tensor entries: each message names the problem."""
    path = tmp_path / "w.pt"
    torch.save({"positional_embedding": _table(3), "epoch": 3, "step": 9}, path)
    with pytest.raises(InputError) as unknown:
        read_checkpoint(path, "onnx")  # type: ignore[arg-type]
    assert str(unknown.value) == (
        "unknown checkpoint format 'onnx': use one of ('dgtrs', 'open_clip', 'openai', 'lightning')"
    )
    with pytest.raises(CheckpointError) as entries:
        read_checkpoint(path)
    assert str(entries.value) == f"{path}: entries ['epoch', 'step'] are not tensors"
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError) as listed:
        read_checkpoint(tmp_path / "list.pt")
    assert str(listed.value) == (
        f"{tmp_path / 'list.pt'} holds a list, not a dictionary of tensors: expected a state dict"
    )


def test_half_weights_become_float32_and_integer_tensors_keep_their_dtype(tmp_path) -> None:
    """Only floating tensors are cast to float32 (values kept); int64 stays int64."""
    half = (_table(3) / 8).half()
    ids = torch.tensor([1, 2, 3])
    torch.save({"positional_embedding": half, "token_ids": ids}, tmp_path / "h.pt")
    read, _ = read_checkpoint(tmp_path / "h.pt")
    assert read["positional_embedding"].dtype == torch.float32
    assert torch.equal(read["positional_embedding"], _table(3) / 8)
    assert read["token_ids"].dtype == torch.int64 and torch.equal(read["token_ids"], ids)


@pytest.mark.parametrize("fmt", [None, "dgtrs", "open_clip"])
def test_ddp_module_prefix_is_stripped(tmp_path, fmt) -> None:
    """Keys saved under "module." (DDP) read as the plain ones, detected or named (bug fixed here)."""
    if fmt == "open_clip":
        plain = {"positional_embedding": _table(4), "text_projection": _table(2)}
        expected = plain
    else:
        plain = {
            "positional_embedding": _table(4),
            "positional_embedding_res": _table(4, start=100),
            "text_projection": _table(2),
        }
        expected = {
            "positional_embedding": torch.cat([_table(4)[:20], _table(4, start=100)[20:]]),
            "text_projection": _table(2),
        }
    torch.save({f"module.{k}": v for k, v in plain.items()}, tmp_path / "ddp.pt")
    read, found = read_checkpoint(tmp_path / "ddp.pt", fmt)
    assert found == (fmt or "dgtrs")
    assert sorted(read) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(read[key], value)


def test_non_finite_message_is_exact() -> None:
    """The NaN refusal counts the bad values and ends with what to do."""
    with pytest.raises(CheckpointError) as refused:
        check_finite({"w": torch.tensor([1.0, float("nan"), float("inf"), 2.0])}, "model.pt")
    assert str(refused.value) == (
        "model.pt: tensor 'w' holds 2 NaN or infinite value(s) out of 4; every embedding of this "
        "model would be NaN. The weights are broken (a diverged training run or a damaged file): "
        "use another checkpoint, or an earlier one of the same run."
    )


# --- checkpoints: writing -------------------------------------------------------------------


class _Text(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(_table(5))


def test_plain_state_dict_keeps_weights_registered_after_freezing() -> None:
    """A head added after the frozen-prefix parametrization is still written, table folded."""
    model = _Text()
    freeze_positional_prefix(model, keep=2)
    model.head = nn.Linear(2, 1)
    state = plain_state_dict(model)  # type: ignore[arg-type]
    assert sorted(state) == ["head.bias", "head.weight", "positional_embedding"]
    assert torch.equal(state["positional_embedding"], _table(5))
    assert torch.equal(state["head.weight"], model.head.weight.detach())


def test_save_creates_missing_parent_folders(tmp_path) -> None:
    """Saving into a folder that does not exist yet creates the whole path."""
    path = save_checkpoint(_Text(), tmp_path / "a" / "b" / "m.pt", format="open_clip")  # type: ignore[arg-type]
    assert path == tmp_path / "a" / "b" / "m.pt"
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == ["positional_embedding"]
    assert torch.equal(loaded["positional_embedding"], _table(5))


def test_unwritable_destination_is_an_output_error_with_the_reason(tmp_path) -> None:
    """A directory in the way of the temporary file: OutputError naming the OS reason."""
    (tmp_path / "m.pt.partial").mkdir()
    with pytest.raises(OutputError) as failed:
        save_checkpoint(_Text(), tmp_path / "m.pt", format="open_clip")  # type: ignore[arg-type]
    assert str(failed.value) == (
        f"cannot write the checkpoint {tmp_path / 'm.pt'}: Is a directory; choose a writable "
        "location with free space"
    )
    assert not (tmp_path / "m.pt").exists()


# --- registry --------------------------------------------------------------------------------


def test_openai_entries_point_at_openais_published_files() -> None:
    """URL, file name, format, digest and description of OpenAI's ViT-B/16 (from OpenAI's clip.py)."""
    digest = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    entry = REGISTRY["openai-vit-b-16"]
    assert entry.name == "openai-vit-b-16"
    assert entry.url == f"https://openaipublic.azureedge.net/clip/models/{digest}/ViT-B-16.pt"
    assert entry.filename == "openai-ViT-B-16.pt"
    assert entry.format == "openai"
    assert entry.sha256 == digest
    assert entry.description == "OpenAI CLIP ViT-B-16 (77 tokens; TorchScript archive)"


def test_registry_status_rows(monkeypatch, tmp_path) -> None:
    """Each row's keys and values; arch "inferred"; 77 tokens for OpenAI, 248 for DGTRS."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "openai-ViT-B-32.pt").write_bytes(b"x")
    rows = {row["name"]: row for row in registry_status()}
    digest = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert rows["openai-vit-b-32"] == {
        "name": "openai-vit-b-32",
        "arch": "inferred",
        "format": "openai",
        "context_length": 77,
        "cached": True,
        "path": str(tmp_path / "models" / "openai-ViT-B-32.pt"),
        "url": f"https://openaipublic.azureedge.net/clip/models/{digest}/ViT-B-32.pt",
        "sha256": digest,
        "description": "OpenAI CLIP ViT-B-32 (77 tokens; TorchScript archive)",
    }
    dgtrs = rows["dgtrs-clip-vit-b-16"]
    assert (dgtrs["arch"], dgtrs["format"], dgtrs["context_length"], dgtrs["cached"]) == (
        "dgtrs-vit-b-16",
        "dgtrs",
        248,
        False,
    )


def _served(server, tmp_path, monkeypatch, payload: bytes = b"w" * 5000):  # noqa: F811
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "served" / "w.pt").write_bytes(payload)
    return _entry(server, "w.pt", hashlib.sha256(payload).hexdigest())


def test_progress_bar_is_shown_by_default_and_hidden_on_request(
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
) -> None:
    """The bar (on stderr) names the file, counts bytes and reaches 100 %; progress=False: silent."""
    entry = _served(server, tmp_path, monkeypatch)
    target = download_weights(entry)
    err = capsys.readouterr().err
    assert "w.pt: 100%" in err and "| 5.00k/5.00k [" in err, err
    assert re.search(r"\d[kMG]?B/s\]", err), err  # the unit is bytes
    target.unlink()
    download_weights(entry, progress=False)
    assert capsys.readouterr().err == ""


def test_download_writes_a_partial_file_and_uses_a_stream_with_a_timeout(
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """While bytes arrive only "<name>.partial" exists; the request streams with a 30 s timeout."""
    entry = _served(server, tmp_path, monkeypatch)
    folder = tmp_path / "cache" / "models"
    seen: list[list[str]] = []
    calls: list[dict] = []
    real_get = requests.get

    def spy(url, **kwargs):
        calls.append(kwargs)
        return real_get(url, **kwargs)

    monkeypatch.setattr(requests, "get", spy)
    download_weights(
        entry, progress=False, report=lambda *_: seen.append(sorted(os.listdir(folder)))
    )
    assert seen == [["w.pt.partial"]]
    assert sorted(os.listdir(folder)) == ["w.pt"]
    assert calls == [{"stream": True, "timeout": 30}]


class _NoLength(http.server.BaseHTTPRequestHandler):
    """Answers with a body and no Content-Length (the end of the body is the end of the stream)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"z" * 3000)

    def log_message(self, *args) -> None:
        pass


def test_download_without_content_length_reports_an_unknown_total(tmp_path, monkeypatch) -> None:
    """No Content-Length: the total is None (not 0, 1 or a crash) and the bytes arrive whole."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLength)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        entry = _entry(
            type("S", (), {"url": f"http://127.0.0.1:{httpd.server_address[1]}"}), "n.pt", None
        )
        reports: list[tuple[int, int | None]] = []
        target = download_weights(entry, progress=False, report=lambda *a: reports.append(a))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert target.read_bytes() == b"z" * 3000
    assert reports[-1] == (3000, None) and all(total is None for _, total in reports)


def test_failed_download_and_unwritable_cache_messages(
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    """A 404 and a cache under a file: the exact messages say what to fetch or set."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    entry = _entry(server, "missing.pt", None)
    target = tmp_path / "cache" / "models" / "missing.pt"
    with pytest.raises(WeightsUnavailableError) as failed:
        download_weights(entry, progress=False)
    assert str(failed.value) == (
        "weights for 'tiny-remote' are not cached and could not be downloaded (HTTPError). "
        f"Download {server.url}/missing.pt and save it as {target} (or set DGTRS_GEO_CACHE), "
        "or pass a local checkpoint path instead of the name."
    )
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "file"))
    with pytest.raises(OutputError) as blocked:
        download_weights(entry, progress=False)
    assert str(blocked.value) == (
        f"cannot create the model cache {tmp_path / 'file' / 'models'} (Not a directory): set "
        "DGTRS_GEO_CACHE to a writable folder"
    )
