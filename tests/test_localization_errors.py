"""Failures a user can fix end in one clear line, exit code 2 and nothing left behind.

Each case is fabricated: a GeoTIFF cut in half, a folder that is a file, a full disk (simulated,
and a real tiny tmpfs where user namespaces allow one), values out of range, SIGTERM and SIGINT.
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from test_localization_api import RednessModel, _raster

from dgtrs_geo.cli import main
from dgtrs_geo.errors import InputError, OutputError
from dgtrs_geo.localization import LocalizationOptions, Localizer, localize, plan_windows

REPO = Path(__file__).resolve().parents[1]
TRANSFORM = from_origin(500000, 4000000, 10, 10)


def _tiled(path: Path, size: int = 512) -> Path:
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 128, "blockysize": 128, "crs": "EPSG:32633",
        "transform": TRANSFORM,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


def _left_in(folder: Path) -> list[str]:
    """Files and folders under ``folder``, except index lock files (empty, reused by the next run)."""
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(".lock")
    )


def test_truncated_geotiff_is_an_input_error_naming_the_file(tmp_path: Path, capsys) -> None:
    raster = _tiled(tmp_path / "cut.tif")
    size = raster.stat().st_size
    with raster.open("r+b") as file:
        file.truncate(size // 2)
    model = RednessModel()
    with pytest.raises(InputError) as caught:
        localize(
            raster, "red", model, scales=(64,), batch_size=8, index_dir=tmp_path / "idx",
            out_dir=tmp_path / "o",
        )  # fmt: skip
    message = str(caught.value)
    assert f"cannot read {raster} (Read failed)" in message
    assert "truncated or damaged" in message and "Copy it again" in message
    # It failed midway through encoding (the first tiles are intact), and left nothing.
    assert model.image_calls > 0
    assert _left_in(tmp_path / "idx") == [] and _left_in(tmp_path / "o") == []


def test_truncated_geotiff_on_the_command_line(tmp_path: Path, tiny_checkpoint, capsys) -> None:
    raster = _tiled(tmp_path / "cut.tif")
    with raster.open("r+b") as file:
        file.truncate(raster.stat().st_size // 2)
    code = main([
        "index", str(raster), "--model", str(tiny_checkpoint), "--scales", "64",
        "--index-dir", str(tmp_path / "idx"),
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"dgtrs-geo index: error: cannot read {raster} (Read failed)")
    assert not any("Traceback" in line for line in err)
    assert _left_in(tmp_path / "idx") == []


def test_unwritable_index_dir_is_found_before_encoding(tmp_path: Path) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    (tmp_path / "file").write_text("not a folder")
    model = RednessModel()
    with pytest.raises(OutputError) as caught:
        localize(raster, "red", model, scales=(64,), index_dir=tmp_path / "file" / "idx")
    assert str(caught.value) == (
        f"index folder {tmp_path / 'file' / 'idx'} is not writable (Not a directory): choose "
        "another with --index-dir"
    )
    assert model.image_calls == 0


def test_too_little_space_for_the_index_is_found_before_encoding(
    tmp_path: Path, monkeypatch
) -> None:
    import dgtrs_geo.localization.session as session

    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    monkeypatch.setattr(session, "check_space", _check_space_with(free=4096))
    model = RednessModel()
    with pytest.raises(
        OutputError, match=r"has 0.0 MiB free but about [0-9.]+ MiB are needed: .*--index-dir"
    ):
        localize(raster, "red", model, scales=(64,), index_dir=tmp_path / "idx")
    assert model.image_calls == 0


def _check_space_with(free: int):
    import dgtrs_geo.localization.writers as writers

    def check(directory, needed, flag):
        original = writers.disk_free
        writers.disk_free = lambda path: free
        try:
            return writers.check_space(directory, needed, flag)
        finally:
            writers.disk_free = original

    return check


def test_full_disk_while_writing_the_index(tmp_path: Path, monkeypatch) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    index_dir = tmp_path / "idx"
    real_open = builtins.open

    def full(file, mode="r", *args, **kwargs):
        # Any file opened for writing in the index folder hits a full disk.
        if str(index_dir) in str(file) and any(c in mode for c in "wax"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    model = RednessModel()
    with pytest.raises(OutputError) as caught:
        localize(raster, "red", model, scales=(64,), index_dir=index_dir)
    assert str(caught.value) == (
        f"no space left on the device of {index_dir} for the embedding index: free space "
        "there or choose another folder with --index-dir"
    )
    assert model.image_calls > 0 and _left_in(index_dir) == []


def test_full_disk_while_writing_outputs_removes_this_runs_files(
    tmp_path: Path, monkeypatch
) -> None:
    import geopandas as gpd

    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)

    def full(self, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", full)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as caught:
        localize(raster, "red", RednessModel(), scales=(64,), index_dir=tmp_path, out_dir=out)
    assert str(caught.value) == (
        f"no space left on the device of {out} writing red.gpkg: free space there or choose "
        "another output folder (-o/--out-dir)"
    )
    # The heatmap written before the polygons was removed, and the half file too.
    assert _left_in(out) == []


def test_gdal_and_sqlite_full_disk_messages_are_recognised(tmp_path: Path) -> None:
    from rasterio.errors import RasterioIOError

    from dgtrs_geo.localization.writers import out_of_space

    assert out_of_space(OSError(errno.ENOSPC, "x"), tmp_path)
    assert out_of_space(
        RuntimeError("sqlite3_exec(...) failed: database or disk is full"), tmp_path
    )
    wrapped = RasterioIOError("Write failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert out_of_space(wrapped, tmp_path)
    assert not out_of_space(RuntimeError("bad geometry"), tmp_path)


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs user namespaces to mount a tmpfs")
def test_full_tmpfs_on_the_command_line(tmp_path: Path, tiny_checkpoint) -> None:
    # A real full disk: a 1 MiB tmpfs filled up, in a private mount namespace.
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    mount = tmp_path / "small"
    mount.mkdir()
    cli = [
        sys.executable, "-m", "dgtrs_geo.cli", "localize", str(raster), "a red roof",
        "--model", str(tiny_checkpoint), "--scales", "64", "--index-dir", str(tmp_path / "idx"),
        "-o", str(mount / "out"), "--device", "cpu",
    ]  # fmt: skip
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {mount} && mkdir {mount}/out && "
        f"(head -c 2000000 /dev/zero > {mount}/filler 2>/dev/null; true) && "
        f"{' '.join(cli)}; echo rc=$?; ls -A {mount}/out"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO,
        timeout=300,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert "rc=2" in lines and lines[-1] == "rc=2", done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dgtrs-geo localize: error: no space left on the device of ")
    assert "Traceback" not in done.stderr


def test_output_folder_that_is_a_file(tmp_path: Path, tiny_checkpoint, capsys) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    existing = tmp_path / "results"
    existing.write_text("an earlier run's notes")
    args = ["localize", str(raster), "x", "-o", str(existing), "--model", str(tiny_checkpoint)]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"dgtrs-geo localize: error: output folder {existing} is not writable (File exists: it is "
        "a file, not a folder): choose another with -o/--out-dir"
    )
    assert not any("Traceback" in line or "%|" in line for line in err)
    assert existing.read_text() == "an earlier run's notes"


def test_huge_plans_need_force(tmp_path: Path, tiny_checkpoint, capsys, monkeypatch) -> None:
    import dgtrs_geo.localization.options as options

    monkeypatch.setattr(options, "MAX_WINDOWS", 10)
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    args = ["index", str(raster), "--model", str(tiny_checkpoint), "--scales", "32",
            "--index-dir", str(tmp_path / "idx"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    count = len(plan_windows(256, 256, (32,)))
    assert count > 10
    assert (
        f"scene.tif has {count} windows, about {count / 2:.0f} s of encoding at 2 windows/s" in err
    )
    assert not (tmp_path / "idx").exists()
    assert main([*args, "--force"]) == 0


def test_bugs_keep_their_traceback(tmp_path: Path, tiny_checkpoint, monkeypatch) -> None:
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Localizer, "query", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(
            [
                "localize",
                str(raster),
                "x",
                "-o",
                str(tmp_path / "o"),
                "--model",
                str(tiny_checkpoint),
            ]
        )
    # ValueError is no longer taken for a user error on the engine's commands either.
    monkeypatch.setattr(Localizer, "query", lambda *a, **k: int("x"))
    with pytest.raises(ValueError, match="invalid literal"):
        main(
            [
                "localize",
                str(raster),
                "x",
                "-o",
                str(tmp_path / "o"),
                "--model",
                str(tiny_checkpoint),
            ]
        )


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_signals_stop_cleanly(tmp_path: Path, tiny_checkpoint, signum, code, name) -> None:
    raster = _tiled(tmp_path / "big.tif", 1024)
    index_dir, out = tmp_path / "idx", tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "dgtrs_geo.cli", "localize", str(raster), "a red roof",
         "--model", str(tiny_checkpoint), "--scales", "32", "--batch-size", "8", "--device", "cpu",
         "--index-dir", str(index_dir), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    # Signal on the first progress line of encoding: the index is then surely unfinished.
    stderr_chunks: list[str] = []
    reader = threading.Thread(
        target=lambda: stderr_chunks.extend(iter(lambda: process.stderr.read(1), ""))
    )
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while "encoded " not in "".join(stderr_chunks):
            assert process.poll() is None and time.monotonic() < deadline, "encoding never started"
            time.sleep(0.02)
        process.send_signal(signum)
        stdout = process.stdout.read()
        process.wait(timeout=60)
        reader.join(timeout=60)
    finally:
        process.kill()
    stderr = "".join(stderr_chunks)
    assert process.returncode == code, stderr
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last == f"dgtrs-geo localize: stopped by {name}; no partial output was left"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and stdout == ""
    assert _left_in(index_dir) == [] and _left_in(out) == []


def test_worker_exits_143_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dgtrs_geo.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert '"event": "ready"' in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
    finally:
        process.kill()
    assert "Traceback" not in process.stderr.read()


def test_options_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    # A bad option fails in milliseconds, before a (possibly downloading) model is touched.
    with pytest.raises(InputError, match="smooth"):
        Localizer(tmp_path / "no-such-model.pt", LocalizationOptions(smooth=-100))
    assert os.listdir(tmp_path) == []
