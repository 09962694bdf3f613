import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dgtrs_geo.localization import fingerprint
from dgtrs_geo.localization.fingerprint import dataset_files
from dgtrs_geo.localization.raster import (
    ArraySource,
    RasterSource,
    ground_sample_distance,
    raster_fingerprint,
)


def _write(path: Path, data: np.ndarray, crs="EPSG:32633", transform=None, nodata=None) -> Path:
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform or from_origin(500000, 4000000, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


def test_uint16_percentile_stretch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(3, 40, 50)).astype(np.uint16)
    source = RasterSource(_write(tmp_path / "u16.tif", data))
    lo, hi = np.percentile(data[0], [2, 98])
    assert source.stretch.low[0] == pytest.approx(lo)
    assert source.stretch.high[0] == pytest.approx(hi)
    rgb, valid = source.read((5, 6, 10, 8))
    expected = np.clip((data[0, 6:14, 5:15].astype(np.float32) - lo) * 255 / (hi - lo), 0, 255)
    np.testing.assert_array_equal(rgb[0], expected.astype(np.uint8))
    assert rgb.dtype == np.uint8 and valid.all()


def test_uint8_identity_and_band_selection_on_four_bands(tmp_path: Path) -> None:
    data = np.stack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 40)])
    path = _write(tmp_path / "four.tif", data)
    rgb, _ = RasterSource(path).read((0, 0, 30, 20))
    assert rgb[:, 0, 0].tolist() == [10, 20, 30]
    rgb, _ = RasterSource(path, bands=[4, 3, 2]).read((0, 0, 30, 20))
    assert rgb[:, 0, 0].tolist() == [40, 30, 20]
    rgb, _ = RasterSource(path, bands=[4]).read((0, 0, 30, 20))
    assert rgb[:, 0, 0].tolist() == [40, 40, 40]
    with pytest.raises(ValueError, match="band index 5 is out of range.*4 band"):
        RasterSource(path, bands=[5, 3, 2])


def test_nodata_mask_and_float_nan(tmp_path: Path) -> None:
    data = np.full((3, 10, 10), 100, np.uint8)
    data[:, :, :4] = 0
    source = RasterSource(_write(tmp_path / "nd.tif", data, nodata=0))
    rgb, valid = source.read((0, 0, 10, 10))
    assert valid[:, :4].sum() == 0 and valid[:, 4:].all()
    grid = source.valid_grid((5, 5))
    assert not grid[:, :2].any() and grid[:, 2:].all()
    floats = np.ones((3, 6, 6), np.float32)
    floats[:, 0, 0] = np.nan
    source = RasterSource(_write(tmp_path / "f.tif", floats))
    _, valid = source.read((0, 0, 6, 6))
    assert not valid[0, 0] and valid.sum() == 35


def test_gsd_projected_and_geographic() -> None:
    assert ground_sample_distance(from_origin(0, 0, 10, 10), CRS.from_epsg(32633), 10, 10) == 10
    # 0.001 degree at the equator: 111.32 m east-west, 110.57 m north-south on WGS 84.
    gsd = ground_sample_distance(from_origin(0, 0.5, 0.001, 0.001), CRS.from_epsg(4326), 2, 1000)
    assert gsd == pytest.approx((111.32 + 110.57) / 2, rel=2e-3)
    # At 60 degrees north, east-west shrinks by cos(60) = 0.5.
    gsd = ground_sample_distance(from_origin(0, 60.0005, 0.001, 0.001), CRS.from_epsg(4326), 2, 1)
    assert gsd == pytest.approx((55.8 + 111.4) / 2, rel=5e-3)
    with pytest.raises(ValueError, match="no CRS"):
        ground_sample_distance(from_origin(0, 0, 1, 1), None, 1, 1)


def test_png_without_world_file_warns_pixel_coordinates(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "plain.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = RasterSource(tmp_path / "plain.png")
    assert any("pixel coordinates" in str(w.message) for w in caught)
    assert source.crs is None and (source.width, source.height) == (16, 12)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(ValueError, match="cannot read raster"):
        RasterSource(bad)
    with pytest.raises(FileNotFoundError, match="raster not found"):
        RasterSource(tmp_path / "missing.tif")


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    data = np.zeros((3, 8, 8), np.uint8)
    path = _write(tmp_path / "a.tif", data)
    first = raster_fingerprint(path)
    assert raster_fingerprint(path) == first
    data[0, 0, 0] = 1
    _write(path, data)
    assert raster_fingerprint(path) != first


def test_array_source_reads_windows() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    rgb, valid = ArraySource(image).read((2, 1, 3, 2))
    np.testing.assert_array_equal(rgb, image[1:3, 2:5].transpose(2, 0, 1))
    assert valid.all()
    with pytest.raises(ValueError, match="uint8"):
        ArraySource(image.astype(np.float32))


def test_vrt_and_jpeg_with_world_file(tmp_path: Path) -> None:
    data = np.zeros((3, 20, 30), np.uint8)
    data[0, 5:10, 10:20] = 200
    _write(tmp_path / "base.tif", data, transform=from_origin(1000, 2000, 2, 2))
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">base.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="30" ySize="20"/><DstRect xOff="0" yOff="0" xSize="30" '
        f'ySize="20"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3)
    )
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="30" rasterYSize="20"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>1000, 2, 0, 2000, 0, -2</GeoTransform>{bands}</VRTDataset>"
    )
    source = RasterSource(vrt)
    assert source.crs.to_epsg() == 32633 and source.transform == from_origin(1000, 2000, 2, 2)
    np.testing.assert_array_equal(source.read((10, 5, 10, 5))[0], data[:, 5:10, 10:20])
    # A JPEG with a world file: georeferenced (pixel centre of the first pixel), no CRS.
    Image.fromarray(data.transpose(1, 2, 0)).save(tmp_path / "photo.jpg", quality=95)
    (tmp_path / "photo.jgw").write_text("2\n0\n0\n-2\n1001\n1999\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        photo = RasterSource(tmp_path / "photo.jpg")
    assert photo.transform == from_origin(1000, 2000, 2, 2) and photo.crs is None


def _settle(path: Path) -> None:
    """Date a file an hour back, like a user's raster, so its digest may be cached."""
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(hour_ago, hour_ago))


def test_fingerprint_sees_one_byte_anywhere_even_with_mtime_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _write(tmp_path / "big.tif", rng.integers(0, 255, (3, 1000, 1000), dtype=np.uint8))
    _settle(path)
    first = raster_fingerprint(path)
    assert raster_fingerprint(path) == first  # from the cache now
    copy = tmp_path / "elsewhere" / "copy.tif"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    assert raster_fingerprint(copy) == first  # content, not names
    before = path.stat()
    with path.open("r+b") as f:  # one byte in the middle of the 3 MB of pixels
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert raster_fingerprint(path) != first


def test_fingerprint_cache_hashes_a_settled_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    hashed: list[str] = []
    real = fingerprint.content_digest
    monkeypatch.setattr(fingerprint, "content_digest", lambda p: hashed.append(p) or real(p))
    path = _write(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8))
    fresh = raster_fingerprint(path)
    assert raster_fingerprint(path) == fresh and len(hashed) == 2  # too recent to cache
    _settle(path)
    assert raster_fingerprint(path) == fresh and raster_fingerprint(path) == fresh
    assert len(hashed) == 3
    (entry,) = fingerprint.cache_dir("fingerprints").glob("*.json")
    assert json.loads(entry.read_text())["path"] == str(path.resolve())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    assert raster_fingerprint(path) == fresh and len(hashed) == 4  # stat key changed


def test_vrt_fingerprint_follows_nested_sources_but_not_aux_xml(tmp_path: Path) -> None:
    _write(tmp_path / "a.tif", np.zeros((1, 20, 30), np.uint8))
    _write(tmp_path / "b.tif", np.ones((1, 20, 30), np.uint8))

    def band(n: int, source: str) -> str:
        return (
            f'<VRTRasterBand dataType="Byte" band="{n}"><SimpleSource><SourceFilename '
            f'relativeToVRT="1">{source}</SourceFilename><SourceBand>1</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
        )

    header = '<VRTDataset rasterXSize="30" rasterYSize="20"><SRS>EPSG:32633</SRS>'
    (tmp_path / "inner.vrt").write_text(f"{header}{band(1, 'a.tif')}</VRTDataset>")
    outer = tmp_path / "outer.vrt"
    outer.write_text(f"{header}{band(1, 'inner.vrt')}{band(2, 'b.tif')}</VRTDataset>")
    names = [Path(f).name for f in dataset_files(outer)]
    assert sorted(names) == ["a.tif", "b.tif", "inner.vrt", "outer.vrt"] and names[0] == "outer.vrt"
    first = raster_fingerprint(outer)
    # Statistics QGIS or GDAL write beside a file change no pixel.
    (tmp_path / "a.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MEAN">0</MDI>'
        "</Metadata></PAMRasterBand></PAMDataset>"
    )
    assert raster_fingerprint(outer) == first
    _write(tmp_path / "a.tif", np.full((1, 20, 30), 7, np.uint8))
    assert raster_fingerprint(outer) != first


def test_describe_records_nodata_an_aux_xml_sets(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8))
    assert RasterSource(path).describe()["nodata"] is None
    (tmp_path / "a.tif.aux.xml").write_text(
        "<PAMDataset>"
        + "".join(
            f'<PAMRasterBand band="{b}"><NoDataValue>0</NoDataValue></PAMRasterBand>'
            for b in (1, 2, 3)
        )
        + "</PAMDataset>"
    )
    assert RasterSource(path).describe()["nodata"] == "0.0"


def test_prune_digest_cache_drops_entries_of_gone_or_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    paths = [_write(tmp_path / f"{n}.tif", np.zeros((3, 8, 8), np.uint8)) for n in "abc"]
    for path in paths:
        _settle(path)
        raster_fingerprint(path)
    entries = {
        json.loads(e.read_text())["path"]: e
        for e in fingerprint.cache_dir("fingerprints").glob("*.json")
    }
    assert sorted(entries) == sorted(str(p.resolve()) for p in paths)
    paths[1].unlink()
    _write(paths[2], np.ones((3, 8, 8), np.uint8))
    removed = fingerprint.prune_digest_cache()
    assert sorted(removed) == sorted(
        [entries[str(paths[1].resolve())], entries[str(paths[2].resolve())]]
    )
    assert list(fingerprint.cache_dir("fingerprints").glob("*.json")) == [
        entries[str(paths[0].resolve())]
    ]


def test_prune_digest_cache_goes_on_past_an_entry_it_cannot_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder where an entry should be (or a read-only shared cache) stays and is not reported.
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path / "cache"))
    folder = fingerprint.cache_dir("fingerprints")
    (folder / "a-folder.json").mkdir(parents=True)
    (folder / "garbled.json").write_text("{")
    assert fingerprint.prune_digest_cache() == [folder / "garbled.json"]
    assert [p.name for p in folder.iterdir()] == ["a-folder.json"]
