"""The command line's error rule, for every command: a failure the user can fix is one line on
stderr and exit code 2; anything else is a bug and keeps its traceback (exit code 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dgtrs_geo.cli import main


def _run_with_bug(patch: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``dgtrs-geo argv`` in a fresh interpreter after ``patch`` plants a bug in the engine."""
    script = f"import sys\n{textwrap.dedent(patch)}\nfrom dgtrs_geo.cli import main\n"
    script += f"sys.exit(main({argv!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )


def _assert_traceback(done: subprocess.CompletedProcess[str], command: str, last: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == last
    assert f"dgtrs-geo {command}: error:" not in done.stderr


def test_a_plain_value_error_inside_evaluate_keeps_its_traceback(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # A ValueError was a one-line "user error" under the 0.1 rule; raised by the engine's own
    # code it is a bug, and must look like one.
    patch = """
        import dgtrs_geo.evaluation.runner as runner
        def broken(*args, **kwargs):
            raise ValueError("planted bug in encode_benchmark")
        runner.encode_benchmark = broken
        """
    argv = ["evaluate", "retrieval", "--model", str(tiny_checkpoint)]
    argv += ["--dataset", "SyntheticScenes", "--limit", "2", "--device", "cpu", "--no-cache"]
    argv += ["--no-progress", "-o", str(tmp_path / "out")]
    done = _run_with_bug(patch, argv)
    _assert_traceback(done, "evaluate", "ValueError: planted bug in encode_benchmark")
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_bug_inside_embed_text_keeps_its_traceback(tiny_checkpoint: Path) -> None:
    patch = """
        from dgtrs_geo.models.factory import EmbeddingModel
        def broken(self, texts):
            raise ValueError("planted bug in tokenize")
        EmbeddingModel.tokenize = broken
        """
    done = _run_with_bug(patch, ["embed-text", "a harbour", "--model", str(tiny_checkpoint)])
    _assert_traceback(done, "embed-text", "ValueError: planted bug in tokenize")
    assert done.stdout == ""


def test_a_runtime_error_inside_models_keeps_its_traceback() -> None:
    patch = """
        import dgtrs_geo.models.registry as registry
        def broken():
            raise RuntimeError("planted bug in registry_status")
        registry.registry_status = broken
        """
    done = _run_with_bug(patch, ["models", "--json"])
    _assert_traceback(done, "models", "RuntimeError: planted bug in registry_status")


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    # Other lines there may be library warnings of this environment, never a traceback.
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"dgtrs-geo {command}: ")]
    assert len(lines) == 1 and lines[0].startswith(f"dgtrs-geo {command}: error: "), err
    return lines[0]


def test_embed_image_names_the_image_it_cannot_read(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.png"
    assert main(["embed-image", str(missing), "--model", str(tiny_checkpoint)]) == 2
    assert f"cannot read the image {missing}" in _one_line_error(capsys, "embed-image")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["embed-image", str(text), "--model", str(tiny_checkpoint)]) == 2
    assert f"cannot read the image {text}" in _one_line_error(capsys, "embed-image")


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "device 'gpu' is not a device"), ("cuda:999", "device 'cuda:999': ")],
)
def test_a_device_this_machine_lacks_is_one_line(
    tiny_checkpoint: Path, device: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed-text", "a harbour", "--model", str(tiny_checkpoint), "--device", device]
    assert main(argv) == 2
    assert message in _one_line_error(capsys, "embed-text")


def test_convert_to_an_unwritable_place_leaves_nothing(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    out = blocker / "model.pt"
    assert main(["convert", str(tiny_checkpoint), str(out), "--to", "dgtrs"]) == 2
    assert f"cannot write the checkpoint {out}" in _one_line_error(capsys, "convert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_caption_config_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    argv = ["captions", "long", str(images), "-o", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--config", str(tmp_path / "none.yaml")]) == 2
    assert "caption config" in _one_line_error(capsys, "captions")
    broken = tmp_path / "broken.yaml"
    broken.write_text("concurrency: [1\n")
    assert main([*argv, "--config", str(broken)]) == 2
    assert f"caption config {broken} is not YAML or JSON" in _one_line_error(capsys, "captions")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("concurrency: two\n")
    assert main([*argv, "--config", str(wrong_type)]) == 2
    assert "concurrency must be a whole number" in _one_line_error(capsys, "captions")
    assert main(argv) == 2  # an empty image folder
    assert "no image (.png" in _one_line_error(capsys, "captions")


def test_a_class_table_that_is_not_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    table = tmp_path / "classes.json"
    table.write_text('"building"')
    argv = ["captions", "masks", str(images), "-o", str(tmp_path / "out.jsonl")]
    assert main([*argv, "--classes", str(table), "--dry-run", "1"]) == 2
    assert "must hold a JSON object or list" in _one_line_error(capsys, "captions")


def test_evaluate_refuses_bad_inputs_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "retrieval", "--model", str(tmp_path / "never-loaded.pt")]
    base += ["--dataset", "SyntheticScenes", "--limit", "2", "--no-cache"]
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    assert main([*base, "-o", str(blocker)]) == 2
    line = _one_line_error(capsys, "evaluate")
    assert f"output folder {blocker} is not writable" in line and "File exists" in line
    missing = tmp_path / "templates.txt"
    assert main([*base, "-o", str(tmp_path / "out"), "--templates", str(missing)]) == 2
    assert f"cannot read the templates file {missing}" in _one_line_error(capsys, "evaluate")
    with pytest.raises(SystemExit) as usage:
        main([*base, "-o", str(tmp_path / "out"), "--selo-scales", "256,big"])
    assert usage.value.code == 2
    assert "'256,big' is not comma-separated whole numbers" in capsys.readouterr().err


def test_a_missing_dataset_is_one_line_with_torchgeos_note(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "retrieval", "--model", str(tiny_checkpoint), "--dataset", "RSITMD"]
    argv += ["--root", str(tmp_path / "rsitmd"), "-o", str(tmp_path / "out")]
    assert main(argv) == 2
    line = _one_line_error(capsys, "evaluate")
    # TorchGeo's message, then the note saying where to get the data set and what to place where.
    assert "Dataset not found" in line and "and place" in line


def test_a_refused_api_key_stops_the_caption_run_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.server
    import threading

    from PIL import Image

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's spelling
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "invalid key"}')

        def log_message(self, *args: object) -> None:
            pass

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    (images / "a.txt").write_text("a grey square")
    monkeypatch.setenv("CAPTION_TEST_KEY", "wrong")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = ["captions", "long", str(images), "-o", str(tmp_path / "out.jsonl")]
        argv += ["--base-url", f"http://127.0.0.1:{server.server_port}/v1"]
        argv += ["--api-key-env", "CAPTION_TEST_KEY", "--no-progress"]
        assert main(argv) == 2
    finally:
        server.shutdown()
        server.server_close()
    line = _one_line_error(capsys, "captions")
    assert "long step stopped: HTTP 401" in line and "CAPTION_TEST_KEY" in line


def test_an_image_folder_without_class_folders_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "aid"
    root.mkdir()  # exists, but holds no class sub-folder
    argv = ["evaluate", "zeroshot", "--model", "never-loaded", "--dataset", "AID"]
    assert main([*argv, "--root", str(root), "-o", str(tmp_path / "out")]) == 2
    line = _one_line_error(capsys, "evaluate")
    assert f"Couldn't find any class folder in {root}" in line and "one sub-folder" in line
