"""An embedding index is used only when it is sound and fits the raster's current pixels.

``RedModel`` embeds an image as (redness, 1 - redness) and "red" as (1, 0), so where the map peaks
is known: a stale index would keep the old peak. Corruptions are made by hand on a saved index,
with ``index.json``'s checksums recomputed here (with xxhash directly) when the check under test
is not the checksum itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
import xxhash
from rasterio.transform import from_origin
from rasterio.windows import Window

from dgtrs_geo.errors import EmbeddingIndexError
from dgtrs_geo.localization import EmbeddingIndex, build_index, localize
from dgtrs_geo.localization.index import IndexRebuildWarning, open_or_build

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
EXPECTED_KEYS = ("model_id", "fingerprint", "raster", "plan")


class RedModel:
    def __init__(self) -> None:
        self.model_id = "red-v1"
        self.image_size = 16
        self.mean, self.std = MEAN, STD
        self.device = torch.device("cpu")
        self.preprocess = None
        self.image_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        rgb = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        red = (rgb[:, 0] - rgb[:, 1]).clamp(0, 1).mean(dim=(1, 2))
        return F.normalize(torch.stack([red, 1 - red], dim=1), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


def _grey(path: Path, size: int, red: tuple[int, int, int, int] | None = None) -> Path:
    data = np.full((3, size, size), 90, np.uint8)
    if red is not None:
        col, row, w, h = red
        data[:, row : row + h, col : col + w] = np.array([250, 10, 10], np.uint8)[:, None, None]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8"}
    transform = from_origin(500000, 4000000, 10, 10)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(data)
    # Settled like a user's raster, so the fingerprint cache keeps its digest.
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(hour_ago, hour_ago))
    return path


def _paint_red_in_place(path: Path, col: int, row: int, size: int) -> None:
    """Overwrite a block of pixels inside the file, then put its size and mtime back."""
    before = path.stat()
    block = np.array([250, 10, 10], np.uint8)[:, None, None] * np.ones((1, size, size), np.uint8)
    with rasterio.open(path, "r+") as dst:
        dst.write(block, window=Window(col, row, size, size))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )


def _inside(point: tuple[float, float], path: Path, col: int, row: int, size: int) -> bool:
    with rasterio.open(path) as src:
        x0, y0 = src.transform @ (col, row)
        x1, y1 = src.transform @ (col + size, row + size)
    return min(x0, x1) <= point[0] <= max(x0, x1) and min(y0, y1) <= point[1] <= max(y0, y1)


@pytest.mark.slow
def test_new_pixels_written_in_the_middle_in_place_give_a_new_map(tmp_path: Path) -> None:
    # 27 MB: the block lies far from the first and last MiB the old fingerprint read.
    raster = _grey(tmp_path / "scene.tif", 3000)
    model = RedModel()
    kwargs = {"scales": (1000,), "index_dir": tmp_path / "idx"}
    (before,) = localize(raster, "red", model, **kwargs)
    assert not _inside(before.best, raster, 1000, 1000, 1000)  # a flat map peaks in a corner
    _paint_red_in_place(raster, 1000, 1000, 1000)
    calls = model.image_calls
    (after,) = localize(raster, "red", model, **kwargs)
    assert model.image_calls > calls  # encoded again, not "reused embedding index"
    assert _inside(after.best, raster, 1000, 1000, 1000)
    assert len(list((tmp_path / "idx").glob("*.dgtrs-index"))) == 2


def test_a_vrt_band_file_edited_behind_the_vrt_gives_a_new_map(tmp_path: Path) -> None:
    _grey(tmp_path / "band.tif", 512)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">band.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="512" rasterYSize="512"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>500000, 10, 0, 4000000, 0, -10</GeoTransform>{bands}</VRTDataset>"
    )
    kwargs = {"scales": (128,), "index_dir": tmp_path / "idx"}
    (before,) = localize(vrt, "red", RedModel(), **kwargs)
    assert not _inside(before.best, vrt, 256, 256, 128)
    xml = vrt.read_bytes()
    _paint_red_in_place(tmp_path / "band.tif", 256, 256, 128)
    assert vrt.read_bytes() == xml
    (after,) = localize(vrt, "red", RedModel(), **kwargs)
    assert _inside(after.best, vrt, 256, 256, 128)


def _rechecksum(index: Path) -> None:
    meta = json.loads((index / "index.json").read_text())
    for name in meta["checksums"]:
        digest = xxhash.xxh3_128((index / name).read_bytes()).hexdigest()
        meta["checksums"][name] = f"xxh3-128:{digest}"
    (index / "index.json").write_text(json.dumps(meta))


def _truncate_embeddings(index: Path) -> None:
    data = (index / "embeddings.npy").read_bytes()
    (index / "embeddings.npy").write_bytes(data[: len(data) // 2])


def _truncate_embeddings_keep_checksum(index: Path) -> None:
    _truncate_embeddings(index)
    _rechecksum(index)


def _empty_windows(index: Path) -> None:
    (index / "windows.npy").write_bytes(b"")
    _rechecksum(index)


def _nan_embeddings(index: Path) -> None:
    embeddings = np.load(index / "embeddings.npy")
    embeddings[3, 1] = np.nan
    np.save(index / "embeddings.npy", embeddings)
    _rechecksum(index)


def _window_outside(index: Path) -> None:
    windows = np.load(index / "windows.npy")
    windows[-1, 0] = 250  # 64 px wide from column 250 of a 256 px raster
    np.save(index / "windows.npy", windows)
    _rechecksum(index)


def _flip_checksum(index: Path) -> None:
    meta = json.loads((index / "index.json").read_text())
    digest = meta["checksums"]["footprints.npy"]
    meta["checksums"]["footprints.npy"] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    (index / "index.json").write_text(json.dumps(meta))


def _garbled_json(index: Path) -> None:
    (index / "index.json").write_text('{"format": "dgtrs-geo-embedding-index", "vers')


def _missing_footprints(index: Path) -> None:
    (index / "footprints.npy").unlink()


CORRUPTIONS: list[tuple[Callable[[Path], None], str]] = [
    (_truncate_embeddings, "embeddings.npy does not match its checksum"),
    (_truncate_embeddings_keep_checksum, "embeddings.npy is truncated"),
    (_empty_windows, "windows.npy is not a numpy array file"),
    (_nan_embeddings, "non-finite values"),
    (_window_outside, "windows outside the 256 x 256 raster"),
    (_flip_checksum, "footprints.npy does not match its checksum"),
    (_garbled_json, "cannot be read"),
    (_missing_footprints, "footprints.npy is missing"),
]


@pytest.mark.parametrize(
    ("corrupt", "reason"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS]
)
def test_a_corrupt_index_is_rebuilt_with_a_warning_or_refused(
    tmp_path: Path, corrupt: Callable[[Path], None], reason: str
) -> None:
    raster = _grey(tmp_path / "scene.tif", 256, red=(160, 32, 64, 64))
    kwargs = {"scales": (64,), "index_dir": tmp_path / "idx"}
    (first,) = localize(raster, "red", RedModel(), **kwargs)
    (path,) = (tmp_path / "idx").glob("*.dgtrs-index")
    index = EmbeddingIndex.load(path)
    expected = {key: index.meta[key] for key in EXPECTED_KEYS}

    corrupt(path)
    with pytest.raises(EmbeddingIndexError, match=reason) as raised:
        EmbeddingIndex.load(path)
    assert str(path) in str(raised.value)

    def fail() -> EmbeddingIndex:
        raise AssertionError("a refused index must not be rebuilt")

    with pytest.raises(EmbeddingIndexError, match=reason) as raised:
        open_or_build(path, expected, fail, allow_rebuild=False)
    assert str(path) in str(raised.value) and "not allowed" in str(raised.value)

    model = RedModel()
    with pytest.warns(IndexRebuildWarning, match=reason):
        (again,) = localize(raster, "red", model, **kwargs)
    assert model.image_calls > 0  # rebuilt, not read
    np.testing.assert_array_equal(again.heatmap, first.heatmap)
    np.testing.assert_array_equal(EmbeddingIndex.load(path).embeddings, index.embeddings)
    assert [p.name for p in (tmp_path / "idx").iterdir() if p.name.startswith(".")] == []


def test_non_finite_embeddings_are_never_written(tmp_path: Path) -> None:
    raster = _grey(tmp_path / "scene.tif", 128)
    good = build_index(raster, RedModel(), scales=(64,), index_dir=tmp_path / "idx")
    expected = {key: good.meta[key] for key in EXPECTED_KEYS}
    target = tmp_path / "other" / good.path.name

    def build() -> EmbeddingIndex:
        embeddings = good.embeddings.copy()
        embeddings[0] = np.inf
        return EmbeddingIndex.create(**expected, windows=good.windows, embeddings=embeddings)

    with pytest.raises(EmbeddingIndexError, match="non-finite.*weights"):
        open_or_build(target, expected, build)
    assert [p.name for p in target.parent.iterdir()] == [f"{target.name}.lock"]


def test_leftovers_of_killed_writers_are_removed_unless_their_writer_lives(
    tmp_path: Path,
) -> None:
    raster = _grey(tmp_path / "scene.tif", 128)
    folder = tmp_path / "idx"
    folder.mkdir()
    killed = [
        folder / ".scene-aaaa.dgtrs-index.tmp-k1ll3d",
        folder / ".scene-bbbb.dgtrs-index.old-x",
    ]
    version_1 = folder / ".scene-cccc.dgtrs-index.ab12cd34"
    live = folder / ".scene-dddd.dgtrs-index.tmp-busy"
    for partial in [*killed, version_1, live]:
        (partial / "index").mkdir(parents=True)
        np.save(partial / "index" / "embeddings.npy", np.zeros((2, 2), np.float32))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
            str(folder / "scene-dddd.dgtrs-index.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        build_index(raster, RedModel(), scales=(64,), index_dir=folder)
        hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        assert hidden == [live.name]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
