"""The Localizer session: warm indexes keyed by content, per-call options, results as JSON.

Uses the "redness" model of test_localization_api.py, whose scores are known.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from test_localization_api import SQUARE, RednessModel, _cos, _raster, _square_bounds

from dgtrs_geo.errors import IndexMismatchError, InputError
from dgtrs_geo.localization import (
    EmbeddingIndex,
    LocalizationOptions,
    Localizer,
    build_index,
    localize,
)

TRANSFORM = from_origin(500000, 4000000, 10, 10)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)


def test_index_is_warm_in_memory_and_queries_never_encode(scene: Path, tmp_path: Path) -> None:
    model = RednessModel()
    session = Localizer(model, LocalizationOptions(scales=(64,), index_dir=str(tmp_path / "idx")))
    index = session.index(scene)
    encoded = model.image_calls
    assert encoded > 0 and session.cache_info() == (0, 1, 8, 1)
    assert session.index(scene) is index
    (red,) = session.query(scene, "red roof")
    blue, grass = session.query(scene, ["blue", "grass"])
    assert model.image_calls == encoded
    assert session.cache_info().hits == 3 and session.cache_info().misses == 1
    minx, miny, maxx, maxy = _square_bounds(TRANSFORM)
    assert minx <= red.best[0] <= maxx and miny <= red.best[1] <= maxy
    assert red.score_max == pytest.approx(_cos(1.0), abs=1e-5) and red.windows == len(index)
    # A new session reads the index from disk: still no encoding.
    other = Localizer(model, session.options)
    other.query(scene, "red")
    assert model.image_calls == encoded and other.cache_info() == (0, 1, 8, 1)


def test_a_changed_raster_is_never_answered_from_memory(scene: Path, tmp_path: Path) -> None:
    model = RednessModel()
    session = Localizer(model, LocalizationOptions(scales=(64,), index_dir=str(tmp_path / "idx")))
    (before,) = session.query(scene, "red")
    calls = model.image_calls
    # Move the red square in place: same size, same georeferencing, new pixels in the middle.
    with rasterio.open(scene, "r+") as dst:
        data = dst.read()
        col, row, w, h = SQUARE
        data[:, row : row + h, col : col + w] = 90
        data[0, 160:224, 16:80] = 250
        data[1:3, 160:224, 16:80] = 10
        dst.write(data)
    (after,) = session.query(scene, "red")
    assert model.image_calls > calls and session.cache_info().hits == 0
    # The best cell follows the square: columns 16..80, rows 160..224.
    x, y = after.best
    assert 500000 + 160 <= x <= 500000 + 800 and 4000000 - 2240 <= y <= 4000000 - 1600
    assert before.best != after.best


def test_lru_drops_the_least_recently_used_index(tmp_path: Path) -> None:
    rasters = [
        _raster(tmp_path / f"s{i}.tif", "EPSG:32633", from_origin(1000 + i * 1e4, 5000, 1, 1))
        for i in range(3)
    ]
    model = RednessModel()
    options = LocalizationOptions(scales=(128,), index_dir=str(tmp_path / "idx"))
    session = Localizer(model, options, max_indexes=2)
    for raster in rasters:
        session.index(raster)
    assert session.cache_info() == (0, 3, 2, 2)
    session.index(rasters[2])  # warm
    session.index(rasters[0])  # dropped: read from disk again
    assert session.cache_info()[:2] == (1, 4)
    session.cache_clear()
    assert session.cache_info().currsize == 0


def test_per_call_overrides_and_rebuild(scene: Path, tmp_path: Path) -> None:
    model = RednessModel()
    session = Localizer(model, LocalizationOptions(scales=(64,), index_dir=str(tmp_path / "idx")))
    (default,) = session.query(scene, "red")
    (cosine,) = session.query(scene, "red", normalise="cosine", threshold=0.9, smooth=0)
    assert (default.normalise, default.threshold) == ("minmax", 0.5)
    assert (cosine.normalise, cosine.threshold) == ("cosine", 0.9)
    assert session.options.normalise == "minmax"  # the session's defaults are unchanged
    calls = model.image_calls
    session.index(scene, rebuild=True)
    assert model.image_calls > calls
    with pytest.raises(InputError, match="smooth"):
        session.query(scene, "red", smooth=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'smoothing'"):
        session.query(scene, "red", smoothing=1)


def test_an_index_built_in_memory_is_scored_as_given(scene: Path, tmp_path: Path) -> None:
    # The catalog's way: it keeps embeddings elsewhere and passes an EmbeddingIndex in.
    model = RednessModel()
    session = Localizer(model, LocalizationOptions(scales=(64,), index_dir=str(tmp_path / "idx")))
    stored = session.index(scene)
    rebuilt = EmbeddingIndex.create(
        model_id=stored.meta["model_id"], fingerprint=stored.meta["fingerprint"],
        raster=stored.meta["raster"], plan=stored.meta["plan"], windows=stored.windows,
        embeddings=stored.embeddings,
    )  # fmt: skip
    calls = model.image_calls
    (given,) = session.query(scene, "red", index=rebuilt)
    (usual,) = session.query(scene, "red")
    assert model.image_calls == calls
    np.testing.assert_array_equal(given.heatmap, usual.heatmap)
    with pytest.raises(IndexMismatchError, match="window plan"):
        session.query(scene, "red", index=rebuilt, scales=(32,))


def test_result_to_json(scene: Path, tmp_path: Path) -> None:
    session = Localizer(RednessModel(), LocalizationOptions(scales=(64,), index_dir=str(tmp_path)))
    (result,) = session.query(scene, "red", out_dir=tmp_path / "out", outputs=["heatmap"])
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["query"] == "red" and payload["best"] == list(result.best)
    assert payload["score_max"] == pytest.approx(_cos(1.0), abs=1e-5)
    # Most 64 px windows hold no red at all: the lowest raw cosine is that of a red share of 0.
    assert payload["score_min"] == pytest.approx(_cos(0.0), abs=1e-6) and _cos(0.0) == 0.0
    assert payload["polygon_count"] == len(result.polygons) >= 1
    assert payload["paths"] == {"heatmap": str(tmp_path / "out" / "red.tif")}
    assert payload["shape"] == [64, 64] and payload["transform"] == list(result.transform)[:6]
    assert rasterio.crs.CRS.from_wkt(payload["crs"]).to_epsg() == 32633
    assert (payload["mode"], payload["normalise"], payload["threshold"]) == ("fast", "minmax", 0.5)
    assert payload["model_id"] == "redness-v1" and payload["windows"] == result.windows
    # A map with no finite cell has no best place: null, not NaN (which JSON lacks).
    result.best = (math.nan, math.nan)
    assert json.loads(json.dumps(result.to_json()))["best"] == [None, None]


def test_progress_reports_stages_in_order(scene: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, str, str]] = []
    session = Localizer(RednessModel(), LocalizationOptions(scales=(64,), index_dir=str(tmp_path)))
    session.query(
        scene,
        "red",
        out_dir=tmp_path / "o",
        progress=lambda f, m, stage: seen.append((f, m, stage)),
    )
    stages = [stage for _, _, stage in seen]
    assert stages[0] == "encoding" and stages[-1] == "writing"
    assert stages.index("scoring") > max(i for i, s in enumerate(stages) if s == "encoding")
    assert [f for f, _, _ in seen] == sorted(f for f, _, _ in seen) and seen[-1][0] == 1.0


def test_deprecation_warnings_point_at_the_caller(scene: Path, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning) as caught:
        localize(scene, "red", RednessModel(), scales=(64,), index_dir=tmp_path, smooth_sigma=0)
    files = {Path(w.filename).name for w in caught if w.category is DeprecationWarning}
    assert files == {Path(__file__).name}


def test_old_keyword_spellings_warn_and_still_work(scene: Path, tmp_path: Path) -> None:
    model = RednessModel()
    kwargs = {"scales": (64,), "index_dir": tmp_path}
    with pytest.warns(DeprecationWarning) as caught:
        (old,) = localize(
            scene, "red", model, normalise_mode="cosine", smooth_sigma=0, reference_mode=False,
            rebuild_index=True, **kwargs,
        )  # fmt: skip
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    for name, new in [
        ("normalise_mode", "normalise"), ("smooth_sigma", "smooth"),
        ("reference_mode", "reference"), ("rebuild_index", "rebuild"),
    ]:  # fmt: skip
        assert (
            f"localize({name}=...) is deprecated and will be removed in 0.3: use {new}=..."
            in messages
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        (new,) = localize(scene, "red", model, normalise="cosine", smooth=0, **kwargs)
    np.testing.assert_array_equal(old.heatmap, new.heatmap)
    assert old.normalise == "cosine"
    with pytest.warns(DeprecationWarning, match=r"build_index\(reference_mode=...\)"):
        build_index(scene, model, reference_mode=False, **kwargs)
    with pytest.raises(TypeError, match="'smooth' and its old name 'smooth_sigma'"):
        with pytest.warns(DeprecationWarning):
            localize(scene, "red", model, smooth=1, smooth_sigma=1)
    with pytest.raises(TypeError, match=r"localize\(\): .*'smoothing'"):
        localize(scene, "red", model, smoothing=1)


def test_scales_in_metres_under_the_patch_are_refused(tiny_model, tmp_path: Path) -> None:
    # 10 m pixels: 100 m windows are 10 px, under the 16 px floor (and over the 8 px patch).
    raster = _raster(tmp_path / "s.tif", "EPSG:32633", TRANSFORM)
    with pytest.raises(InputError, match=r"a window of 100 m is only 10 px .* at least 160 m"):
        Localizer(tiny_model, LocalizationOptions(scales=[100, 640], scale_unit="m")).index(raster)
    with pytest.raises(InputError, match=r"at least the model's 8 px patch"):
        Localizer(tiny_model, LocalizationOptions(scales=[4]))
