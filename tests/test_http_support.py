"""The local range-honouring HTTP server of tests/support/http.py, and GDAL reading a COG from it."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window

from tests.support.http import serve_directory


def _get(url: str, method: str = "GET", range_: str | None = None):
    request = urllib.request.Request(url, method=method)
    if range_ is not None:
        request.add_header("Range", range_)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def blob(tmp_path: Path) -> bytes:
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    return data


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=10-19", 10, 20), ("bytes=4990-", 4990, 5000), ("bytes=-7", 4993, 5000),
     ("bytes=4995-9999", 4995, 5000), ("bytes=0-0", 0, 1)],
)  # fmt: skip
def test_range_request_returns_those_bytes(
    tmp_path: Path, blob: bytes, header: str, start: int, stop: int
) -> None:
    with serve_directory(tmp_path) as url:
        status, headers, body = _get(f"{url}/blob.bin", range_=header)
    assert status == 206
    assert body == blob[start:stop]
    assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/5000"
    assert headers["Content-Length"] == str(stop - start)


def test_whole_file_head_and_errors(tmp_path: Path, blob: bytes) -> None:
    log: list = []
    with serve_directory(tmp_path, log=log) as url:
        assert _get(f"{url}/blob.bin")[::2] == (200, blob)
        status, headers, body = _get(f"{url}/blob.bin", method="HEAD")
        assert (status, headers["Content-Length"], headers["Accept-Ranges"], body) == (
            200, "5000", "bytes", b"",
        )  # fmt: skip
        status, headers, _ = _get(f"{url}/blob.bin", range_="bytes=5000-")
        assert (status, headers["Content-Range"]) == (416, "bytes */5000")
        # Several ranges, or an invalid one, may be ignored (RFC 9110): the whole file.
        assert _get(f"{url}/blob.bin", range_="bytes=0-1,5-6")[::2] == (200, blob)
        assert _get(f"{url}/blob.bin", range_="bytes=9-3")[::2] == (200, blob)
        assert _get(f"{url}/missing.bin")[0] == 404
    assert [(method, status) for method, _, _, status in log] == [
        ("GET", 200), ("HEAD", 200), ("GET", 416), ("GET", 200), ("GET", 200), ("GET", 404),
    ]  # fmt: skip


def test_server_stops_at_the_end_of_the_block(tmp_path: Path, blob: bytes) -> None:
    with serve_directory(tmp_path) as url:
        assert _get(f"{url}/blob.bin")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/blob.bin", timeout=5)


def _write_cog(path: Path, size: int = 1024) -> np.ndarray:
    """A 3-band COG of random (incompressible) pixels, 256 px tiles, with overviews."""
    pixels = np.random.default_rng(1).integers(0, 256, (3, size, size), dtype=np.uint8)
    plain = path.with_name("plain.tif")
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 0.5, 0.5),
    }  # fmt: skip
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(pixels)
    rasterio.shutil.copy(plain, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE")
    plain.unlink()
    return pixels


def test_gdal_reads_a_cog_window_through_vsicurl(tmp_path: Path) -> None:
    pixels = _write_cog(tmp_path / "scene.tif")
    window = Window(300, 500, 200, 100)
    with rasterio.open(tmp_path / "scene.tif") as local:
        expected = local.read(window=window)
        local_overview = local.read(1, out_shape=(128, 128))
        assert local.overviews(1)  # the COG has overviews to read remotely too
    np.testing.assert_array_equal(expected, pixels[:, 500:600, 300:500])
    log: list = []
    with serve_directory(tmp_path, log=log) as url:
        with rasterio.Env(GDAL_HTTP_MAX_RETRY=0):
            with rasterio.open(f"/vsicurl/{url}/scene.tif") as remote:
                assert (remote.width, remote.height, remote.count) == (1024, 1024, 3)
                assert remote.crs == "EPSG:32633"
                np.testing.assert_array_equal(remote.read(window=window), expected)
                np.testing.assert_array_equal(remote.read(1, out_shape=(128, 128)), local_overview)  # fmt: skip
    served = [entry for entry in log if entry[1] == "/scene.tif"]
    assert served and all(status == 206 for method, _, _, status in served if method == "GET")
    # Ranges, not the whole 3 MB file: the reads above need a few of its 16 full-size tiles.
    fetched = sum(_range_length(r) for method, _, r, _ in served if method == "GET")
    assert fetched < 0.6 * (tmp_path / "scene.tif").stat().st_size


def _range_length(header: str) -> int:
    first, last = header.removeprefix("bytes=").split("-")
    return int(last) - int(first) + 1
