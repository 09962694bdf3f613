"""The catalog store (GeoParquet parts, checksums, consolidation) and search over known embeddings.

Parts are fabricated from windows and random unit vectors, so every search result can be checked
against a brute-force computation written here independently (scores by matrix product, distances
by pyproj's geodesic, overlap tests by shapely).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.windows import Window, bounds

from dgtrs_geo.catalog.finalize import finalize
from dgtrs_geo.catalog.options import catalog_options
from dgtrs_geo.catalog.search import SearchIndex, candidate_rows, search_rows
from dgtrs_geo.catalog.sources import Scene
from dgtrs_geo.catalog.store import CatalogStore, ScenePart
from dgtrs_geo.errors import EmbeddingIndexError, IndexMismatchError, InputError
from dgtrs_geo.localization.raster import ground_sample_distance
from dgtrs_geo.localization.windows import plan_windows

DIM = 16
UTC = dt.UTC

#: (scene id, CRS, geotransform, date): two scenes of one place (UTM and Web Mercator), one
#: in degrees 50 km away, one undated.
SCENES = [
    ("utm", "EPSG:32633", Affine(2.0, 0, 500000, 0, -2.0, 5000200), dt.datetime(2024, 5, 1)),
    ("merc", "EPSG:3857", Affine(2.8, 0, 1669792, 0, -2.8, 5650300), dt.datetime(2023, 5, 1)),
    ("geo", "EPSG:4326", Affine(3e-5, 0, 15.6, 0, -3e-5, 45.3), dt.datetime(2022, 1, 1)),
    ("undated", "EPSG:32633", Affine(2.0, 0, 500300, 0, -2.0, 5000200), None),
]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_part(
    name: str, crs: str, transform: Affine, date, seed: int, size: int = 120
) -> ScenePart:
    plan = plan_windows(size, size, (24, 48))
    gsd = ground_sample_distance(transform, CRS.from_user_input(crs), size, size)
    when = None if date is None else date.replace(tzinfo=UTC)
    return ScenePart(
        scene=Scene(f"{name}-0123456789ab", f"/data/{name}.tif", when, f"item-{name}"),
        fingerprint=f"fp-{name}",
        crs=CRS.from_user_input(crs),
        transform=transform,
        width=size,
        height=size,
        gsd=gsd,
        scales_px=(24, 48),
        plan_count=len(plan),
        window_index=np.arange(len(plan), dtype=np.int32),
        windows=plan.windows,
        scales=plan.windows[:, 2].astype(np.float64) * 2.0,
        embeddings=_unit(np.random.default_rng(seed), len(plan)),
    )


def new_store(root: Path, model_id: str = "tiny-model") -> CatalogStore:
    return CatalogStore.create_or_open(
        root, model_id=model_id, model="tiny.pt", dim=DIM, options=catalog_options()
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[CatalogStore, dict[str, ScenePart]]:
    store = new_store(tmp_path / "c.dgtrs-catalog")
    parts = {}
    for seed, (name, crs, transform, date) in enumerate(SCENES):
        parts[name] = make_part(name, crs, transform, date, seed)
        store.write_part(parts[name])
    return store, parts


def test_a_part_is_geoparquet_that_pyarrow_geopandas_and_duckdb_read(store) -> None:
    store, parts = store
    part = parts["utm"]
    path = store.part_path(part.scene.scene_id)
    schema = pq.read_schema(path)
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert str(schema.field("embedding").type) == f"fixed_size_list<element: float>[{DIM}]"

    frame = gpd.read_parquet(path)
    assert frame.crs.to_epsg() == 4326 and len(frame) == len(part.windows)
    # Footprints in the scene CRS are rasterio's bounds of each window.
    expected = np.array([bounds(Window(*w), part.transform) for w in part.windows])
    footprint = frame[["footprint_minx", "footprint_miny", "footprint_maxx", "footprint_maxy"]]
    np.testing.assert_allclose(footprint.to_numpy(), expected, rtol=0, atol=1e-6)
    # Each polygon's corners are the window's corners taken to longitude, latitude by pyproj.
    to_geo = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    for w, polygon in zip(part.windows[:5], frame.geometry[:5], strict=True):
        minx, miny, maxx, maxy = bounds(Window(*w), part.transform)
        corners = np.array([to_geo.transform(x, y) for x, y in ((minx, maxy), (maxx, maxy),
                                                              (maxx, miny), (minx, miny))])  # fmt: skip
        vertices = np.array(polygon.exterior.coords)
        for corner in corners:
            assert np.abs(vertices - corner).sum(axis=1).min() < 1e-9
    np.testing.assert_allclose(np.stack(frame["embedding"]), part.embeddings, atol=0)
    assert (frame["scene_crs"] == "EPSG:32633").all() and (frame["item_id"] == "item-utm").all()
    assert frame["date"].iloc[0] == dt.datetime(2024, 5, 1, tzinfo=UTC)
    np.testing.assert_allclose(frame["size_m"], part.windows[:, 2] * 2.0)

    count, dims, first = duckdb.sql(
        f"SELECT count(*), min(len(embedding)), first(embedding ORDER BY window_index) "
        f"FROM read_parquet('{store.root}/parts/*.parquet') WHERE scene_id = 'utm-0123456789ab'"
    ).fetchall()[0]
    assert (count, dims) == (len(part.windows), DIM)
    np.testing.assert_allclose(first, part.embeddings[0], rtol=1e-7)


def test_a_changed_or_cut_part_fails_verification(store) -> None:
    store, parts = store
    record = store.record("utm-0123456789ab")
    assert store.verify(record) is None
    path = store.part_path("utm-0123456789ab")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "fails its checksum" in store.verify(record)
    assert store.verify(record, full=False) is None  # the cheap check sees the size only
    path.write_bytes(bytes(data[:-10]))
    assert "bytes, not" in store.verify(record, full=False)
    path.unlink()
    assert "missing" in store.verify(record)


def test_catalog_json_refuses_other_models_options_and_newer_versions(tmp_path: Path) -> None:
    root = tmp_path / "c.dgtrs-catalog"
    new_store(root, "model-a")
    with pytest.raises(IndexMismatchError, match="built with model 'model-a', not 'model-b'"):
        new_store(root, "model-b")
    with pytest.raises(IndexMismatchError, match="options"):
        CatalogStore.create_or_open(
            root, model_id="model-a", model=None, dim=DIM, options=catalog_options(scales=(99,))
        )
    meta = json.loads((root / "catalog.json").read_text())
    (root / "catalog.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(EmbeddingIndexError, match="version-2 catalog; this dgtrs-geo reads"):
        CatalogStore.open(root)
    with pytest.raises(InputError, match="not a dgtrs-geo catalog"):
        CatalogStore.open(tmp_path)


def test_finalize_gathers_verified_parts_and_leaves_out_a_damaged_one(store) -> None:
    store, parts = store
    damaged = store.part_path("merc-0123456789ab")
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0x01
    damaged.write_bytes(bytes(data))
    summary = finalize(store.root)
    assert [f.scene_id for f in summary.corrupt] == ["merc-0123456789ab"]
    assert "checksum" in summary.corrupt[0].error
    assert store.record("merc-0123456789ab")["status"] == "failed"
    assert not damaged.exists()  # never searched, indexed again by the next run
    index = SearchIndex.load(store)
    order = ["geo", "undated", "utm"]  # scene-id order, the damaged scene left out
    assert list(index.scenes["scene_id"]) == [f"{n}-0123456789ab" for n in order]
    # The search index keeps float16 (the parts keep the float32 the model gave).
    assert index.embeddings.dtype == np.float16
    np.testing.assert_array_equal(
        index.embeddings, np.concatenate([parts[n].embeddings for n in order]).astype(np.float16)
    )
    np.testing.assert_array_equal(
        index.windows, np.concatenate([parts[n].windows for n in order]).astype(np.int32)
    )
    assert summary.rows == len(index) == sum(len(parts[n].windows) for n in order)
    # Nothing changed: the current index is kept; a new part makes a new one.
    assert finalize(store.root).index == summary.index
    store.write_part(parts["merc"])
    again = finalize(store.root)
    assert again.index != summary.index and again.scenes == 4 and again.corrupt == []


def test_an_empty_or_unfinished_catalog_cannot_be_searched(tmp_path: Path) -> None:
    store = new_store(tmp_path / "c.dgtrs-catalog")
    with pytest.raises(EmbeddingIndexError, match="is empty: index scenes into it first"):
        SearchIndex.load(store)
    finalize(store.root)
    with pytest.raises(EmbeddingIndexError, match="holds no windows"):
        SearchIndex.load(store)
    store.write_part(make_part(*SCENES[0], seed=0))
    with pytest.warns(UserWarning, match="has 1 part.*covers 0"):
        with pytest.raises(EmbeddingIndexError, match="holds no windows"):
            SearchIndex.load(store)


def test_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    store = new_store(tmp_path / "c.dgtrs-catalog")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    dead = store.root / "parts" / f".a.parquet~{host}~{done.stdout.strip()}.tmp"
    live = store.root / "parts" / f".b.parquet~{host}~{os.getpid()}.tmp"
    remote_old = store.root / ".index~elsewhere~1.tmp"
    remote_new = store.root / "scenes" / ".c.json~elsewhere~1.tmp"
    for path in (dead, live, remote_new):
        path.write_text("x")
    remote_old.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(remote_old, (old, old))
    assert sorted(store.clean_temporaries()) == sorted([dead, remote_old])
    assert live.exists() and remote_new.exists()


# --- search over known embeddings --------------------------------------------------------------


def _reference(index: SearchIndex, query: np.ndarray, top: int, rows=None) -> list[int]:
    """Brute force: every score, best first, a window dropped within 3/4 side of a better one."""
    geod = Geod(ellps="WGS84")
    allowed = np.arange(len(index)) if rows is None else np.asarray(rows)
    scores = np.asarray(index.embeddings, dtype=np.float32)[allowed] @ query.astype(np.float32)
    kept: list[tuple[int, float, float, float]] = []  # row, side, centre lon, centre lat
    for row in allowed[np.argsort(-scores, kind="stable")]:
        scene = index.scenes.iloc[np.searchsorted(index.scenes["row_start"], row, "right") - 1]
        side = max(index.windows[row][2:]) * scene["gsd"]
        lon, lat = (index.bounds[row][:2] + index.bounds[row][2:]) / 2
        if all(
            geod.inv(lon, lat, olon, olat)[2] >= 0.75 * max(side, oside)
            for _, oside, olon, olat in kept
        ):
            kept.append((int(row), side, lon, lat))
        if len(kept) == top:
            break
    return [row for row, *_ in kept]


@pytest.fixture
def index(store) -> SearchIndex:
    store, _ = store
    finalize(store.root)
    return SearchIndex.load(store)


def test_search_keeps_the_best_window_of_each_place(index: SearchIndex) -> None:
    query = _unit(np.random.default_rng(42), 1)[0]
    scores, rows = search_rows(index, query, top=12)
    assert list(rows) == _reference(index, query, 12)
    stored = np.asarray(index.embeddings, dtype=np.float32)
    np.testing.assert_allclose(scores, stored[rows] @ query, rtol=0, atol=1e-6)
    assert np.all(np.diff(scores) <= 0)
    # With a distance of zero nothing is suppressed: the plain top 12 by score.
    _, plain = search_rows(index, query, top=12, min_distance=0.0)
    best = np.argsort(-(stored @ query), kind="stable")[:12]
    assert list(plain) == list(best)


def test_filters_by_box_date_and_area(index: SearchIndex, tmp_path: Path) -> None:
    query = _unit(np.random.default_rng(7), 1)[0]
    utm = index.scenes[index.scenes["scene_id"] == "utm-0123456789ab"].iloc[0]
    lon0, lat0, lon1, lat1 = utm["bounds"]
    box = (lon0, lat0, (lon0 + lon1) / 2, (lat0 + lat1) / 2)
    rows = candidate_rows(index, bbox=box)
    windows = shapely.box(*np.asarray(index.bounds).T)
    expected = np.flatnonzero(shapely.intersects(windows, shapely.box(*box)))
    assert list(rows) == list(expected) and len(rows) > 0
    assert list(search_rows(index, query, 5, rows)[1]) == _reference(index, query, 5, rows)

    # The same box in UTM metres selects at least those windows (its EPSG:4326 bounds contain it).
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    x0, y0 = to_utm.transform(box[0], box[1])
    x1, y1 = to_utm.transform(box[2], box[3])
    assert set(rows) <= set(candidate_rows(index, bbox=(x0, y0, x1, y1), bbox_crs="EPSG:32633"))

    dated = candidate_rows(index, date="2023-01-01/..")
    scene_of = index.scene_of(dated)
    assert set(index.scenes["scene_id"].iloc[np.unique(scene_of)]) == {
        "utm-0123456789ab", "merc-0123456789ab"
    }  # fmt: skip
    assert len(candidate_rows(index, date="../2021-12-31")) == 0

    aoi = gpd.GeoDataFrame(geometry=[shapely.Point(box[0], box[1]).buffer(0.002)], crs=4326)
    aoi.to_crs(3857).to_file(tmp_path / "aoi.gpkg")
    inside = candidate_rows(index, aoi=tmp_path / "aoi.gpkg")
    circle = aoi.geometry.iloc[0]
    assert list(inside) == list(np.flatnonzero(shapely.intersects(windows, circle)))


def test_a_box_outside_every_scene_warns_and_names_swapped_axes(index: SearchIndex) -> None:
    lon0, lat0, lon1, lat1 = index.scenes["bounds"].iloc[0]
    with pytest.warns(UserWarning, match="outside every scene.*axes were swapped"):
        rows = candidate_rows(index, bbox=(lat0, lon0, lat1, lon1))
    assert len(rows) == 0
    with pytest.raises(InputError, match="latitude 100.0 is outside -90..90"):
        candidate_rows(index, bbox=(10, 0, 20, 100))
    with pytest.raises(InputError, match="min < max"):
        candidate_rows(index, bbox=(20, 0, 10, 1))


def test_large_catalogs_are_searched_through_faiss_as_exactly_as_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two scenes of 2,821 windows; ann.py builds IVF-PQ from 2,000 rows instead of 50,000.
    monkeypatch.setattr("dgtrs_geo.catalog.ann.EXACT_BELOW", 2000)
    store = new_store(tmp_path / "c.dgtrs-catalog")
    for seed, (name, crs, transform, date) in enumerate(SCENES[:2]):
        store.write_part(make_part(name, crs, transform, date, seed, size=800))
    summary = finalize(store.root)
    assert summary.ann == "ivfpq" and summary.rows == 2 * 2821
    index = SearchIndex.load(store)
    assert index.ann.kind == "ivfpq"
    queries = _unit(np.random.default_rng(11), 5)
    everything = np.asarray(index.embeddings, dtype=np.float32) @ queries.T
    for q, query in enumerate(queries):
        scores, rows = search_rows(index, query, top=20, min_distance=0.0)
        exact = np.argsort(-everything[:, q], kind="stable")[:20]
        assert len(set(rows) & set(exact)) >= 19  # recall@20
        np.testing.assert_allclose(scores, everything[rows, q], atol=1e-6)  # true cosines
    # A filter that leaves more rows than an exact scan is worth: the ANN with the filter.
    utm = index.scenes.iloc[1]
    lon0, lat0, lon1, lat1 = utm["bounds"]
    allowed = candidate_rows(index, bbox=(lon0, lat0, (lon0 + lon1) / 2, lat1))
    assert 100 < len(allowed) < len(index)
    scores, rows = search_rows(index, queries[0], top=20, rows=allowed, min_distance=0.0)
    assert set(rows) <= set(allowed)
    exact = allowed[np.argsort(-everything[allowed, 0], kind="stable")[:20]]
    assert len(set(rows) & set(exact)) >= 19


def _clustered(rng: np.random.Generator, n: int, centres: int = 12) -> np.ndarray:
    """Unit vectors in clusters of uneven spread, as window embeddings are."""
    c = _unit(rng, centres)
    k = rng.integers(centres, size=n)
    spread = rng.uniform(0.2, 0.6, centres)
    x = c[k] + spread[k, None] * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_a_filtered_search_returns_the_exact_top_k_of_the_filtered_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dgtrs_geo.catalog import ann

    # Three scenes of 2,821 windows; ann.py builds IVF-PQ from 2,000 rows instead of 50,000.
    monkeypatch.setattr(ann, "EXACT_BELOW", 2000)
    masked: list[int] = []
    real = ann._search_parameters

    def spy(index, nprobe, ids):
        masked.append(len(ids))
        return real(index, nprobe, ids)

    monkeypatch.setattr(ann, "_search_parameters", spy)
    rng = np.random.default_rng(5)
    store = new_store(tmp_path / "c.dgtrs-catalog")
    for seed, (name, crs, transform, date) in enumerate(SCENES[:3]):
        part = make_part(name, crs, transform, date, seed, size=800)
        part.embeddings = _clustered(rng, len(part.windows))
        store.write_part(part)
    assert finalize(store.root).ann == "ivfpq"
    index = SearchIndex.load(store)
    stored = np.asarray(index.embeddings, dtype=np.float64)  # the float16 values search reads
    queries = _clustered(rng, 4)
    lon0, lat0, lon1, lat1 = index.scenes.set_index("scene_id").loc["utm-0123456789ab", "bounds"]
    glon0, glat0, glon1, glat1 = index.scenes.set_index("scene_id").loc[
        "geo-0123456789ab", "bounds"
    ]
    filters = {
        # Over 1/16 of the rows: FAISS searches them with the other rows masked out.
        "bbox": ({"bbox": (lon0, lat0, (lon0 + lon1) / 2, lat1)}, True),
        "date": ({"date": "2023-01-01/2023-12-31"}, True),
        # Under 1/16: an exact scan of those rows.
        "small bbox": (
            {"bbox": (glon0, glat0, (9 * glon0 + glon1) / 10, (9 * glat0 + glat1) / 10)},
            False,
        ),
    }
    top = 20
    for name, (arguments, through_faiss) in filters.items():
        allowed = candidate_rows(index, **arguments)
        assert 0 < len(allowed) < len(index), name
        assert (len(allowed) * 16 > len(index)) == through_faiss, name
        masked.clear()
        for query in queries:
            scores, rows = search_rows(index, query, top=top, rows=allowed, min_distance=0.0)
            brute = stored[allowed] @ query.astype(np.float64)
            best = np.lexsort((allowed, -brute))[:top]
            assert set(rows) == set(allowed[best]), name
            np.testing.assert_allclose(scores, brute[best], atol=1e-5, err_msg=name)
        assert (masked == [len(allowed)] * len(queries)) if through_faiss else not masked, name


def test_prune_drops_the_scenes_whose_file_is_gone_and_keeps_the_rest(tmp_path: Path) -> None:
    from dgtrs_geo.catalog.prune import prune

    store = new_store(tmp_path / "c.dgtrs-catalog")
    files = {}
    for seed, (name, crs, transform, date) in enumerate(SCENES[:3]):
        part = make_part(name, crs, transform, date, seed)
        files[name] = tmp_path / f"{name}.tif"
        files[name].write_bytes(b"pixels")
        part.scene = Scene(part.scene.scene_id, str(files[name]), part.scene.date, None)
        store.write_part(part)
    remote = make_part("far", *SCENES[3][1:], seed=7)
    remote.scene = Scene("far-0123456789ab", "https://example.com/far.tif", None, None)
    store.write_part(remote)
    store.write_failure("bad-0123456789ab", str(tmp_path / "bad.tif"), "cannot read")
    assert finalize(store.root).scenes == 4
    files["merc"].unlink()

    listed = prune(store.root, dry_run=True)
    assert listed.dropped == [
        ("bad-0123456789ab", str(tmp_path / "bad.tif")),
        ("merc-0123456789ab", str(files["merc"])),
    ]
    assert listed.finalized is None and len(store.records()) == 5  # nothing dropped

    summary = prune(store.root)
    assert summary.dropped == listed.dropped
    assert set(store.records()) == {"utm-0123456789ab", "geo-0123456789ab", "far-0123456789ab"}
    assert not store.part_path("merc-0123456789ab").exists()
    index = SearchIndex.load(store)  # the new current index, without the dropped scene
    assert sorted(index.scenes["scene_id"]) == sorted(store.records())
    assert summary.finalized is not None and summary.finalized.rows == len(index) == sum(
        r["rows"] for r in store.records().values()
    )

    # Every local file missing looks like unmounted data: refused unless forced.
    files["utm"].unlink()
    files["geo"].unlink()
    with pytest.raises(InputError, match="none of the 2 local scene files.*--force"):
        prune(store.root)
    assert len(store.records()) == 3
    assert prune(store.root, force=True).finalized.scenes == 1  # the remote scene stays
