"""Nearest-neighbour search of catalogs (dgtrs_geo/catalog/ann.py) against brute force in float64."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dgtrs_geo.catalog import ann
from dgtrs_geo.errors import (
    Cancelled,
    EmbeddingIndexError,
    IndexMismatchError,
    InputError,
    OutputError,
)

DIM = 32


def clustered(n: int, *, centres: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in clusters of uneven spread, and 20 queries drawn near them."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, DIM))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    spread = rng.uniform(0.3, 0.9, centres)

    def draw(m: int) -> np.ndarray:
        k = rng.integers(centres, size=m)
        x = c[k] + spread[k, None] * rng.normal(size=(m, DIM)) / np.sqrt(DIM)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(20)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, subset: np.ndarray | None = None):
    """Top ``k`` by a float64 full sort (score descending, then row ascending), padded."""
    ids = np.arange(len(x)) if subset is None else np.unique(subset)
    scores = (q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)) @ np.asarray(
        x[ids], np.float64
    ).T
    out_s = np.full((len(q), k), -np.inf)
    out_r = np.full((len(q), k), -1)
    for i, row in enumerate(scores):
        order = np.lexsort((ids, -row))[:k]
        out_s[i, : len(order)], out_r[i, : len(order)] = row[order], ids[order]
    return out_s, out_r


def recall(expected: np.ndarray, found: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(expected, found, strict=True)])
    )


@pytest.fixture
def small_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build FAISS indexes from 1,000 rows up, so tests of a few thousand rows reach them."""
    monkeypatch.setattr(ann, "EXACT_BELOW", 1000)


def test_exact_search_equals_brute_force() -> None:
    x, q = clustered(3000)
    scores, rows = ann.exact_search(x, q * 3.0, 50)  # queries are normalised
    expected_s, expected_r = brute_force(x, q, 50)
    np.testing.assert_array_equal(rows, expected_r)
    np.testing.assert_allclose(scores, expected_s, atol=1e-6)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


def test_exact_search_restricted_to_rows_equals_brute_force_on_them() -> None:
    x, q = clustered(3000)
    subset = np.random.default_rng(1).choice(3000, 700, replace=False)
    with_duplicates = np.concatenate([subset, subset[:50]])[::-1]  # any order, repeats ignored
    scores, rows = ann.exact_search(x, q, 40, rows=with_duplicates)
    expected_s, expected_r = brute_force(x, q, 40, subset)
    np.testing.assert_array_equal(rows, expected_r)
    np.testing.assert_allclose(scores, expected_s, atol=1e-6)
    assert np.isin(rows, subset).all()


def test_exact_search_in_small_blocks_breaks_ties_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    x, q = clustered(500)
    x[[7, 90, 200, 300, 499]] = q[0] = np.eye(DIM, dtype=np.float32)[3]  # scores exactly 1
    whole = ann.exact_search(x, q, 30)
    monkeypatch.setattr(ann, "BLOCK_BYTES", 37 * (DIM * 6 + len(q) * 4))  # 37-row blocks
    blocked = ann.exact_search(x, q, 30)
    np.testing.assert_array_equal(blocked[1], whole[1])
    np.testing.assert_allclose(blocked[0], whole[0], atol=1e-6)  # BLAS sums by block shape
    np.testing.assert_array_equal(whole[1][0, :5], [7, 90, 200, 300, 499])
    assert (whole[0][0, :5] == 1).all() and whole[0][0, 5] < 1
    np.testing.assert_array_equal(whole[1], brute_force(x, q, 30)[1])


def test_fewer_rows_than_k_are_padded(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(1500)
    scores, rows = ann.exact_search(x[:5], q, 8)
    assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    np.testing.assert_array_equal(np.sort(rows[:, :5], axis=1), np.tile(np.arange(5), (20, 1)))
    scores, rows = ann.exact_search(x, q, 8, rows=np.array([3, 1]))
    assert (rows[:, 2:] == -1).all() and set(rows[0, :2]) == {1, 3}
    assert (ann.exact_search(x, q, 4, rows=np.array([], dtype=np.int64))[1] == -1).all()
    ann.build_ann(x, tmp_path / "idx")
    index = ann.AnnIndex.load(tmp_path / "idx")
    assert index.kind == "ivfpq"
    scores, rows = index.search(q[:2], 2000)
    assert (rows[:, 1500:] == -1).all() and np.isneginf(scores[:, 1500:]).all()
    np.testing.assert_array_equal(np.sort(rows[:, :1500], axis=1), np.tile(np.arange(1500), (2, 1)))


# Measured on these vectors (100 clusters, so a query's 100 neighbours span several cells;
# FAISS 1.15.1, identical over 3 builds): recall@100 0.7735 probing 4 of 64 cells with 400
# candidates, 0.956 with 16 cells and 1,000 candidates. Default parameters scan every cell at
# this size (SCAN_ROWS) and re-rank every row: exact.
@pytest.mark.parametrize(
    ("nprobe", "rerank", "low", "high"), [(4, 400, 0.72, 0.85), (16, 1000, 0.93, 0.99)]
)
def test_ann_recall_against_exact(
    tmp_path: Path, small_exact: None, nprobe: int, rerank: int, low: float, high: float
) -> None:
    x, q = clustered(4000, centres=100)
    ann.build_ann(x, tmp_path / "idx")
    index = ann.AnnIndex.load(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "ann.json").read_text())
    assert manifest["factory"] == "IVF64_HNSW32,PQ8x4fsr" and manifest["nprobe"] == 64
    expected_s, expected_r = brute_force(x, q, 100)
    np.testing.assert_array_equal(index.search(q, 100)[1], expected_r)
    index.nprobe, index.rerank = nprobe, rerank
    scores, rows = index.search(q, 100)
    assert low <= recall(expected_r, rows) <= high
    # Whatever was found carries its exact cosine, best first.
    exact = np.einsum("qd,qkd->qk", q, x[rows].astype(np.float64))
    np.testing.assert_allclose(scores, exact, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


# Measured (same vectors and build): with 4 cells and 400 candidates, recall@100 among 50% of
# the rows 0.79, among 20% 0.86 (nprobe grows by 2x and 5x): not below the 0.77 without a filter.
@pytest.mark.parametrize("share", [0.5, 0.2])
def test_ann_restricted_to_rows_keeps_its_recall(
    tmp_path: Path, small_exact: None, share: float
) -> None:
    x, q = clustered(4000, centres=100)
    ann.build_ann(x, tmp_path / "idx")
    index = ann.AnnIndex.load(tmp_path / "idx")
    index.nprobe, index.rerank = 4, 400
    subset = np.random.default_rng(2).choice(4000, int(4000 * share), replace=False)
    scores, rows = index.search(q, 100, rows=subset)
    assert np.isin(rows, subset).all()
    assert 0.72 <= recall(brute_force(x, q, 100, subset)[1], rows) < 1
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[rows].astype(np.float64)), atol=1e-6)  # fmt: skip


def test_ann_restricted_to_few_rows_is_exact(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(4000, centres=100)
    ann.build_ann(x, tmp_path / "idx")
    index = ann.AnnIndex.load(tmp_path / "idx")
    index.nprobe, index.rerank = 4, 400
    subset = np.random.default_rng(3).choice(4000, 250, replace=False)  # 1/16 of the rows
    scores, rows = index.search(q, 100, rows=subset)
    expected_s, expected_r = brute_force(x, q, 100, subset)
    np.testing.assert_array_equal(rows, expected_r)
    np.testing.assert_allclose(scores, expected_s, atol=1e-6)


def test_small_catalogs_are_searched_exactly(tmp_path: Path) -> None:
    x, q = clustered(3000)
    ann.build_ann(x, tmp_path / "idx")
    index = ann.AnnIndex.load(tmp_path / "idx")
    assert index.kind == "exact" and index.faiss_index is None
    np.testing.assert_array_equal(index.search(q, 60)[1], brute_force(x, q, 60)[1])


def test_float16_memory_map_is_referenced_not_copied(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(2500)
    np.save(tmp_path / "embeddings.npy", x.astype(np.float16))
    half = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    ann.build_ann(half, tmp_path / "catalog" / "ann")
    folder = tmp_path / "catalog" / "ann"
    assert not list(folder.glob("ann-*.npy"))
    manifest = json.loads((folder / "ann.json").read_text())
    assert manifest["embeddings"]["path"] == "../../embeddings.npy"
    assert manifest["embeddings"]["dtype"] == "<f2"
    index = ann.AnnIndex.load(folder)
    index.nprobe, index.rerank = 64, 2500
    scores, rows = index.search(q, 100)
    expected_s, expected_r = brute_force(half, q, 100)  # the float16 values, exactly
    np.testing.assert_array_equal(rows, expected_r)
    np.testing.assert_allclose(scores, expected_s, atol=1e-6)
    # The catalog moves as a whole (it renames its index folder): the relative path still holds.
    shutil.move(tmp_path, tmp_path.with_name(tmp_path.name + "-moved"))
    moved = tmp_path.with_name(tmp_path.name + "-moved") / "catalog" / "ann"
    np.testing.assert_array_equal(ann.AnnIndex.load(moved).search(q, 10)[1], rows[:, :10])


def test_array_in_memory_is_copied_and_round_trips(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(2500)
    ann.build_ann(x, tmp_path / "idx")
    (copy,) = (tmp_path / "idx").glob("ann-*.npy")
    np.testing.assert_array_equal(np.load(copy), x)
    first = ann.AnnIndex.load(tmp_path / "idx").search(q, 100)
    again = ann.AnnIndex.load(tmp_path / "idx").search(q, 100)
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[0], again[0])


def test_rebuild_replaces_files_and_leaves_others(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(2500)
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "notes.txt").write_text("not the index's")
    ann.build_ann(x, folder)
    old = sorted(p.name for p in folder.glob("ann-*"))
    ann.build_ann(x[:2000], folder)
    new = sorted(p.name for p in folder.glob("ann-*"))
    assert len(new) == 2 and not set(old) & set(new)
    assert (folder / "notes.txt").read_text() == "not the index's"
    assert len(ann.AnnIndex.load(folder)) == 2000


def test_cancelled_build_keeps_the_previous_index(tmp_path: Path, small_exact: None) -> None:
    x, q = clustered(2500)
    ann.build_ann(x[:2000], tmp_path / "idx")
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())

    def cancel(fraction: float, stage: str) -> None:
        if stage == "adding rows":
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        ann.build_ann(x, tmp_path / "idx", progress=cancel)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == before
    assert len(ann.AnnIndex.load(tmp_path / "idx")) == 2000


def _corrupt_faiss(folder: Path) -> None:
    (path,) = folder.glob("ann-*.faiss")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_faiss(folder: Path) -> None:
    (path,) = folder.glob("ann-*.faiss")
    path.write_bytes(path.read_bytes()[:1000])


def _newer_version(folder: Path) -> None:
    manifest = json.loads((folder / "ann.json").read_text())
    (folder / "ann.json").write_text(json.dumps({**manifest, "version": ann.VERSION + 1}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "ann.json").unlink(), "ann.json is missing"),
        (lambda f: (f / "ann.json").write_text("{not json"), "unreadable"),
        (lambda f: (f / "ann.json").write_text('{"format": "other"}'), "unreadable"),
        (_newer_version, "format version 2"),
        (lambda f: next(f.glob("ann-*.faiss")).unlink(), "is missing"),
        (_corrupt_faiss, "corrupt"),
        (_truncate_faiss, "corrupt"),
        (lambda f: next(f.glob("ann-*.npy")).unlink(), "cannot be read"),
    ],
)
def test_damaged_index_is_refused(tmp_path: Path, small_exact: None, damage, message: str) -> None:
    x, _ = clustered(1500)
    ann.build_ann(x, tmp_path / "idx")
    damage(tmp_path / "idx")
    with pytest.raises(EmbeddingIndexError, match=message):
        ann.AnnIndex.load(tmp_path / "idx")


def test_changed_embeddings_are_a_mismatch(tmp_path: Path, small_exact: None) -> None:
    x, _ = clustered(1500)
    np.save(tmp_path / "embeddings.npy", x)
    ann.build_ann(np.load(tmp_path / "embeddings.npy", mmap_mode="r"), tmp_path / "idx")
    changed = x.copy()
    changed[[0, -1]] = changed[[-1, 0]]  # the first and last rows are always sampled
    np.save(tmp_path / "embeddings.npy", changed)
    with pytest.raises(IndexMismatchError, match="changed since"):
        ann.AnnIndex.load(tmp_path / "idx")
    np.save(tmp_path / "embeddings.npy", x[:1400])
    with pytest.raises(IndexMismatchError, match="no longer holds the 1500 x 32 rows"):
        ann.AnnIndex.load(tmp_path / "idx")


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        (np.ones((10, DIM), np.float32), "norm 5.657"),
        (np.full((10, DIM), np.nan, np.float32), "norm nan"),
        (np.eye(10, DIM, dtype=np.float64), "float16 or float32"),
        (np.zeros((0, DIM), np.float32), "empty"),
        (np.ones(DIM, np.float32), "2-D"),
    ],
)
def test_bad_embeddings_are_refused(tmp_path: Path, embeddings: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ann.build_ann(embeddings, tmp_path / "idx")
    assert not list(tmp_path.glob("idx/ann*"))


def test_bad_queries_k_and_rows_are_refused() -> None:
    x, q = clustered(100)
    with pytest.raises(InputError, match=r"\[q, 32\]"):
        ann.exact_search(x, q[:, :16], 5)
    with pytest.raises(InputError, match="non-zero"):
        ann.exact_search(x, np.zeros(DIM, np.float32), 5)
    with pytest.raises(InputError, match="positive integer"):
        ann.exact_search(x, q, 0)
    with pytest.raises(InputError, match=r"\[0, 100\)"):
        ann.exact_search(x, q, 5, rows=np.array([3, 100]))
    with pytest.raises(InputError, match="integer row ids"):
        ann.exact_search(x, q, 5, rows=np.array([0.5]))


def test_unwritable_folder_is_an_output_error(tmp_path: Path) -> None:
    x, _ = clustered(100)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="a-file"):
        ann.build_ann(x, tmp_path / "a-file" / "idx")
