"""Building and searching catalogs in-process: the single-raster pipeline over many scenes.

A colour model with known answers (``RednessModel``: an image's embedding is its redness) shows
the search finding planted red squares across scenes in different CRSs, one result per square;
the tiny random-weight model shows that a catalog's windows and embeddings are those of the
single-raster index, and that heatmaps from stored embeddings are those of ``localize``.
"""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.shutil
import shapely
import torch
import torch.nn.functional as F
from affine import Affine
from pyproj import Transformer

from dgtrs_geo.catalog import Catalog
from dgtrs_geo.catalog.search import SearchIndex
from dgtrs_geo.errors import IndexMismatchError, InputError
from dgtrs_geo.localization import build_index, localize
from dgtrs_geo.localization.encode import encode_texts
from tests.support.http import serve_directory

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SQUARE = (40, 40, 24, 24)  # col, row, width, height of a planted red square


class RednessModel:
    """Embeds an image as (redness, 1 - redness); "red" as (1, 0), anything else as (0, 1)."""

    model_id = "redness-v1"
    image_size = 16
    mean, std = MEAN, STD
    preprocess = None

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.image_calls = 0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        rgb = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        red = (rgb[:, 0] - rgb[:, 1]).clamp(0, 1).mean(dim=(1, 2))
        return F.normalize(torch.stack([red, 1 - red], dim=1), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


UTM = Affine(2.0, 0, 500000, 0, -2.0, 5000200)


def make_scene(
    path: Path,
    *,
    crs: str | None = "EPSG:32633",
    transform: Affine = UTM,
    size: tuple[int, int] = (96, 96),
    count: int = 3,
    dtype: str = "uint8",
    red: tuple[int, int, int, int] | None = None,
    noise: int = 20,
    seed: int = 0,
) -> Path:
    """A grey scene with noise, optionally a red square; other dtypes scaled by 10."""
    rng = np.random.default_rng(seed)
    height, width = size
    data = 90 + rng.integers(-noise, noise + 1, (count, height, width)).astype(np.float64)
    if red is not None:
        col, row, w, h = red
        data[0, row : row + h, col : col + w] = 250
        data[1:, row : row + h, col : col + w] = 10
    if dtype != "uint8":
        data *= 10
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype}
    georef = {} if crs is None else {"crs": crs, "transform": transform}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scene without a CRS is made on purpose
        with rasterio.open(path, "w", **profile, **georef) as dst:
            dst.write(data.astype(dtype))
    return path


def _square_centre_lonlat(crs: str, transform: Affine) -> tuple[float, float]:
    col, row, w, h = SQUARE
    x, y = transform @ (col + w / 2, row + h / 2)
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)


def test_search_finds_each_planted_square_once_across_crss(tmp_path: Path) -> None:
    mercator = Affine(2.0, 0, 1669792, 0, -2.0, 5650300)
    make_scene(tmp_path / "utm.tif", red=SQUARE, noise=0)
    make_scene(tmp_path / "merc.tif", crs="EPSG:3857", transform=mercator, red=SQUARE, noise=0)
    make_scene(tmp_path / "plain.tif", crs="EPSG:4326",
               transform=Affine(2e-5, 0, 15.5, 0, -2e-5, 45.2), noise=0)  # fmt: skip
    model = RednessModel()
    catalog = Catalog.build([tmp_path], model, tmp_path / "c.dgtrs-catalog", scales=(64,),
                            device="cpu")  # fmt: skip
    assert catalog.summary.ok and catalog.summary.count("indexed") == 3
    hits = catalog.search("a red roof", top=3)
    assert list(hits["rank"]) == [1, 2, 3]
    # The window that holds the whole square scores the cosine of its red share (the resize's
    # ringing at the square's edges moves it a little); one hit per square, then grey ground.
    red = (250 - 10) / 255 * (24 * 24) / (32 * 32)
    assert hits["score"].iloc[0] == pytest.approx(red / np.hypot(red, 1 - red), abs=0.01)
    assert hits["score"].iloc[1] == pytest.approx(hits["score"].iloc[0], abs=1e-6)
    assert hits["score"].iloc[2] < 0.5
    found = {Path(h).name: g for h, g in zip(hits["href"][:2], hits.geometry[:2], strict=True)}
    assert set(found) == {"utm.tif", "merc.tif"}
    assert found["utm.tif"].contains(shapely.Point(_square_centre_lonlat("EPSG:32633", UTM)))
    assert found["merc.tif"].contains(shapely.Point(_square_centre_lonlat("EPSG:3857", mercator)))
    assert (hits[["col_off", "row_off", "width"]].iloc[:2].to_numpy() == [32, 32, 32]).all()
    assert hits.crs.to_epsg() == 4326


@pytest.fixture
def mixed(tmp_path: Path) -> list[Path]:
    """Scenes of different CRSs, resolutions, band counts and dtypes."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    return [
        make_scene(folder / "utm_u8.tif", seed=1),
        make_scene(folder / "utm32_u16.tif", crs="EPSG:32632", count=4, dtype="uint16",
                   transform=Affine(3.0, 0, 700000, 0, -3.0, 5000300), size=(80, 90), seed=2),
        make_scene(folder / "geo_f32.tif", crs="EPSG:4326", count=1, dtype="float32",
                   transform=Affine(3e-5, 0, 15.0, 0, -3e-5, 45.0), size=(70, 64), seed=3),
    ]  # fmt: skip


def test_windows_and_embeddings_are_those_of_the_single_raster_index(
    tmp_path: Path, mixed: list[Path], tiny_model
) -> None:
    catalog = Catalog.build(mixed, tiny_model, tmp_path / "c.dgtrs-catalog", scales=(50, 100),
                            device="cpu")  # fmt: skip
    assert catalog.summary.ok
    index = catalog.index
    for raster in mixed:
        alone = build_index(raster, tiny_model, scales=(50, 100), scale_unit="m",
                            index_dir=tmp_path / "single")  # fmt: skip
        row = index.scenes[index.scenes["href"] == str(raster.resolve())].iloc[0]
        rows = slice(row["row_start"], row["row_stop"])
        np.testing.assert_array_equal(index.windows[rows], alone.windows)
        part = pq.read_table(catalog.store.part_path(row["scene_id"]))
        stored = np.stack(part["embedding"].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(stored, alone.embeddings, atol=1e-6, rtol=0)
        np.testing.assert_allclose(index.embeddings[rows], alone.embeddings, atol=1e-3)
        assert set(part["scene_crs"].to_pylist()) == {f"EPSG:{rasterio.open(raster).crs.to_epsg()}"}


def test_rerun_indexes_only_new_and_changed_scenes(
    tmp_path: Path, mixed: list[Path], tiny_model
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    first = Catalog.build(mixed[:2], tiny_model, root, scales=(50, 100), device="cpu").summary
    assert first.count("indexed") == 2
    with rasterio.open(mixed[0], "r+") as dst:  # new pixels in the middle of one scene
        dst.write(np.full((3, 10, 10), 200, np.uint8), window=((40, 50), (40, 50)))
    # No options given: the catalog's own (50, 100 m) apply.
    second = Catalog.build(mixed, tiny_model, root, device="cpu").summary
    status = {Path(o.href).name: o.status for o in second.outcomes}
    assert status == {"utm_u8.tif": "indexed", "utm32_u16.tif": "unchanged",
                      "geo_f32.tif": "indexed"}  # fmt: skip
    assert second.finalized.scenes == 3
    with pytest.raises(IndexMismatchError, match="options"):
        Catalog.build(mixed, tiny_model, root, scales=(60, 100), device="cpu")


def test_unreadable_scenes_are_reported_and_the_rest_is_indexed(
    tmp_path: Path, mixed: list[Path], tiny_model
) -> None:
    no_crs = make_scene(tmp_path / "no_crs.tif", crs=None)
    truncated = tmp_path / "truncated.tif"
    make_scene(truncated, size=(200, 200))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    sources = [*mixed, no_crs, truncated, tmp_path / "missing.tif"]
    catalog = Catalog.build(sources, tiny_model, tmp_path / "c.dgtrs-catalog", scales=(50, 100),
                            device="cpu")  # fmt: skip
    summary = catalog.summary
    assert not summary.ok and summary.count("indexed") == 3
    errors = {Path(f.source).name: f.error for f in summary.failures}
    assert set(errors) == {"no_crs.tif", "truncated.tif", "missing.tif"}
    assert "has no CRS" in errors["no_crs.tif"]
    assert "no such file" in errors["missing.tif"]
    report = summary.report()
    assert "failed           3" in report and "FAILED" in report
    assert catalog.index.manifest["scenes"] == 3
    assert len(list(catalog.store.root.glob("parts/*"))) == 3  # no part for a failed scene
    hits = catalog.search("a field", top=2, model=tiny_model)
    assert set(hits["href"]) <= {str(p.resolve()) for p in mixed}


def test_a_damaged_part_is_indexed_again_and_reported(
    tmp_path: Path, mixed: list[Path], tiny_model
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    catalog = Catalog.build(mixed, tiny_model, root, scales=(50, 100), device="cpu")
    before = np.array(catalog.index.embeddings)
    part = next(root.glob("parts/*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x40
    part.write_bytes(bytes(data))
    summary = Catalog.build(mixed, tiny_model, root, device="cpu").summary
    notes = {o.scene_id: o.note for o in summary.outcomes if o.note}
    assert list(notes) == [part.stem] and "checksum" in notes[part.stem]
    assert summary.count("indexed") == 1 and summary.count("unchanged") == 2
    np.testing.assert_allclose(Catalog.open(root).index.embeddings, before, atol=1e-6)


def test_search_writes_layers_and_refuses_another_model(
    tmp_path: Path, mixed: list[Path], tiny_model, tiny_checkpoint: Path
) -> None:
    from dgtrs_geo.models import create_clip, load_model, save_checkpoint

    root = tmp_path / "c.dgtrs-catalog"
    Catalog.build(mixed, tiny_checkpoint, root, scales=(50, 100), device="cpu")
    catalog = Catalog.open(root)  # the model comes from catalog.json
    hits = catalog.search(["a road", "a river"], top=4, out_dir=tmp_path / "out")
    assert list(hits.columns) == [
        "query", "rank", "score", "scene", "href", "date", "item_id", "col_off", "row_off",
        "width", "height", "size_m", "geometry",
    ]  # fmt: skip
    assert list(hits["query"]) == ["a road"] * 4 + ["a river"] * 4
    # Scores are cosines of the text and the stored embedding of each window.
    text = encode_texts(tiny_model, ["a road"])[0]
    index: SearchIndex = catalog.index
    for row in hits.iloc[:4].itertuples():
        scene = index.scenes[index.scenes["scene_id"] == row.scene].iloc[0]
        windows = np.asarray(index.windows[scene["row_start"] : scene["row_stop"]])
        at = np.flatnonzero((windows == [row.col_off, row.row_off, row.width, row.height]).all(1))
        stored = index.embeddings[scene["row_start"] + at[0]].astype(np.float32)
        assert row.score == pytest.approx(float(stored @ text), abs=1e-5)
    for name in ("results.gpkg", "results.parquet"):
        written = gpd.read_file(tmp_path / "out" / name) if name.endswith("gpkg") else \
            gpd.read_parquet(tmp_path / "out" / name)  # fmt: skip
        assert len(written) == 8 and written.crs.to_epsg() == 4326
        assert list(written["rank"]) == list(hits["rank"])
    assert not list((tmp_path / "out").glob(".*")), "temporary files left behind"

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(create_clip("dgtrs-tiny"), other, format="dgtrs")
    other_id = load_model(other).model_id
    with pytest.raises(
        IndexMismatchError, match=rf"built with model '{tiny_model.model_id}', not '{other_id}'"
    ):
        catalog.search("a road", model=other)
    with pytest.raises(IndexMismatchError, match=other_id):
        Catalog.build(mixed, other, root, device="cpu")
    with pytest.raises(InputError, match="--heatmaps writes files"):
        catalog.search("a road", heatmaps=1)


def test_heatmaps_come_from_stored_embeddings_and_match_localize(
    tmp_path: Path, mixed: list[Path], tiny_model, monkeypatch
) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    catalog = Catalog.build(mixed, tiny_model, root, scales=(50, 100), device="cpu")

    def no_encoding(*args, **kwargs):
        raise AssertionError("heatmaps must not encode windows again")

    monkeypatch.setattr("dgtrs_geo.localization.session.encode_windows", no_encoding)
    hits = catalog.search("a harbour", top=3, heatmaps=2, out_dir=tmp_path / "out")
    mapped = hits.dropna(subset=["heatmap"])
    assert mapped["scene"].nunique() == 2 and set(mapped["scene"]) <= set(hits["scene"][:3])
    monkeypatch.undo()
    first = mapped.iloc[0]
    record = catalog.index.scenes
    scales = tuple(record[record["scene_id"] == first["scene"]].iloc[0]["scales_px"])
    (fresh,) = localize(first["href"], "a harbour", tiny_model, scales=scales,
                        index_dir=tmp_path / "fresh")  # fmt: skip
    with rasterio.open(first["heatmap"]) as src:
        assert src.transform == fresh.transform and src.crs == fresh.crs
        np.testing.assert_allclose(src.read(1), fresh.heatmap, atol=1e-5, equal_nan=True)
    assert gpd.read_file(first["polygons"]).crs == fresh.crs
    # A scene changed since it was indexed gets no heatmap: its embeddings no longer describe it.
    with rasterio.open(first["href"], "r+") as dst:
        dst.write(np.zeros((dst.count, 8, 8), dst.dtypes[0]), window=((0, 8), (0, 8)))
    with pytest.warns(UserWarning, match="changed since it was indexed"):
        again = catalog.search("a harbour", top=3, heatmaps=2, out_dir=tmp_path / "again")
    assert again[again["scene"] == first["scene"]]["heatmap"].isna().all()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cog_over_http_is_indexed_and_unreachable_hrefs_are_reported(
    tmp_path: Path, tiny_model
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    local = make_scene(tmp_path / "local.tif", size=(128, 128), seed=3)
    rasterio.shutil.copy(local, www / "scene.tif", driver="COG")
    items = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "stac_version": "1.0.0", "id": "remote-scene", "geometry": None,
        "properties": {"datetime": "2024-07-01T00:00:00Z"}, "links": [],
        "assets": {"visual": {"href": "scene.tif"}},
    }]}  # fmt: skip
    (www / "items.json").write_text(json.dumps(items))
    requests: list = []
    with serve_directory(www, log=requests) as base:
        sources = [f"{base}/items.json", f"{base}/missing.tif",
                   f"http://127.0.0.1:{_closed_port()}/scene.tif", local]  # fmt: skip
        catalog = Catalog.build(sources, tiny_model, tmp_path / "c.dgtrs-catalog",
                                scales=(32, 64), scale_unit="px", device="cpu")  # fmt: skip
    # GDAL read the COG by byte ranges, never the whole file.
    reads = [r for r in requests if r[0] == "GET" and r[1] == "/scene.tif"]
    assert reads and all(r[2] is not None and r[3] == 206 for r in reads)
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
