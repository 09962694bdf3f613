"""Tests written from the mutation run on dgtrs_geo/localization/session.py: each pins a behaviour
a surviving mutant changed.

The triage (which survivors are equivalent, and why) is listed in
benchmarks/results/mutation-triage.md. Uses the "redness" model of test_localization_api.py,
whose scores are known.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import box
from test_localization_api import RednessModel, _raster
from test_oracle_localization import _windows

from dgtrs_geo.errors import Cancelled, InputError, ModelError, OutputError
from dgtrs_geo.localization import LocalizationOptions, LocalizationResult, Localizer, build_index
from dgtrs_geo.localization.session import plan_meta
from dgtrs_geo.localization.windows import plan_windows

TRANSFORM = from_origin(500000, 4000000, 10, 10)


def _session(tmp_path: Path, model=None, **options) -> Localizer:
    options = {"scales": (64,), "index_dir": str(tmp_path / "idx"), **options}
    return Localizer(model or RednessModel(), LocalizationOptions(**options))


# --- results as users read them ----------------------------------------------------------------


def _result(crs: CRS | None) -> LocalizationResult:
    polygons = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1), box(2, 2, 3, 3)], crs=crs)
    return LocalizationResult(
        query="red roof", heatmap=np.zeros((3, 5), np.float32), transform=from_origin(0, 3, 1, 1),
        crs=crs, polygons=polygons, best=(12.5, 40.25), score_max=0.734561, score_min=0.1,
    )  # fmt: skip


def test_summary_names_x_then_y_and_the_unit() -> None:
    """The one-line summary: x and y in that order, "px" without a CRS, the CRS's name with one."""
    assert _result(None).summary() == (
        "'red roof': best at x=12.5, y=40.25 (px), max cosine 0.7346, 2 polygon(s) >= 0.5"
    )
    assert _result(CRS.from_epsg(32633)).summary() == (
        "'red roof': best at x=12.5, y=40.25 (EPSG:32633), max cosine 0.7346, 2 polygon(s) >= 0.5"
    )


def test_to_json_of_a_result_in_pixel_coordinates_has_a_null_crs() -> None:
    """A raster without a CRS: ``crs`` is null in the JSON, not an exception."""
    payload = json.loads(json.dumps(_result(None).to_json()))
    assert payload["crs"] is None and payload["best"] == [12.5, 40.25]
    assert payload["shape"] == [3, 5] and payload["polygon_count"] == 2


# --- progress, as callbacks see it -------------------------------------------------------------


def test_progress_messages_and_stages_of_index_and_query(tmp_path: Path) -> None:
    """Every progress call: fraction, message and stage, for a build and a query from disk."""
    scene = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    built: list[tuple[float, str, str]] = []
    index = _session(tmp_path, batch_size=16).index(
        scene, progress=lambda f, m, stage: built.append((f, m, stage))
    )
    n = len(index)
    assert n == len(_windows(256, 256, 64)) == 31  # two 64 px grids, offsets 0 and 32
    done = [*range(16, n, 16), n]
    assert built == [
        (0.0, f"encoding {n} windows of scene.tif", "encoding"),
        *[(k / n, f"encoded {k}/{n} windows", "encoding") for k in done],
    ]
    seen: list[tuple[float, str, str]] = []
    # A new session has nothing in memory: the index comes from disk.
    _session(tmp_path).query(
        scene, ["red", "grass"], out_dir=tmp_path / "out", outputs=("heatmap", "polygons"),
        progress=lambda f, m, stage: seen.append((f, m, stage)),
    )  # fmt: skip
    assert seen == [
        (0.9, f"reused embedding index {index.path.name} ({n} windows)", "encoding"),
        (0.9, "scoring 2 query(ies)", "scoring"),
        (0.95, "writing 4 file(s)", "writing"),
        (1.0, "done", "writing"),
    ]


def test_cancel_after_the_index_says_localization_cancelled(tmp_path: Path) -> None:
    """A cancel seen between index and scoring raises Cancelled with a readable message."""
    scene = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    session = _session(tmp_path)
    session.index(scene)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled) as caught:
        session.query(scene, "red", cancel=cancel)
    assert str(caught.value) == "localization cancelled"


# --- errors users read -------------------------------------------------------------------------


def test_a_model_file_gone_while_loading_is_a_model_error_with_its_reason(monkeypatch) -> None:
    """A plain FileNotFoundError from loading (file removed meanwhile) keeps its message."""
    import dgtrs_geo.models

    reason = FileNotFoundError(2, "No such file or directory", "/data/gone.pt")

    def load_model(*args, **kwargs):
        raise reason

    monkeypatch.setattr(dgtrs_geo.models, "load_model", load_model)
    with pytest.raises(ModelError) as caught:
        Localizer("/data/gone.pt")
    assert str(caught.value) == "[Errno 2] No such file or directory: '/data/gone.pt'"
    assert caught.value.__cause__ is reason


def test_aoi_touching_the_raster_edge_from_outside_does_not_overlap(tmp_path: Path) -> None:
    """An AOI whose rows end at the raster's top edge is refused, in pixel coordinates."""
    # No CRS: the bounds are in the geotransform's units; rows 0..256 are y 256..0.
    plain = _raster(tmp_path / "plain.tif", None, from_origin(0, 256, 1, 1))
    session = _session(tmp_path)
    for aoi in [(10.0, 256.0, 100.0, 256.5), (10.0, 256.0, 100.0, 257.0)]:  # rows -0.5..0, -1..0
        message = (
            f"area of interest {aoi} does not overlap the raster plain.tif "
            "(bounds given in its CRS, pixel coordinates)"
        )
        with pytest.raises(InputError, match=re.escape(message)):
            session.query(plain, "red", aoi=aoi)


def test_all_nodata_raster_error_names_the_raster_and_the_causes(tmp_path: Path) -> None:
    """The whole message for a raster with no usable window."""
    empty = _raster(tmp_path / "empty.tif", "EPSG:32633", TRANSFORM, nodata_cols=256)
    message = (
        "no window of empty.tif has at least 50% valid pixels: the raster (or the area of "
        "interest) is all nodata, or the bands chosen (--bands) are empty"
    )
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        _session(tmp_path).query(empty, "red")


# --- the index: what it records, what memory keeps, what disk space it asks ---------------------


def test_reference_mode_is_part_of_the_plan_an_index_records(tmp_path: Path) -> None:
    """Fast and reference windows are preprocessed differently: never one index for both."""
    scene = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    model = RednessModel()
    session = _session(tmp_path, model)
    fast = session.index(scene)
    calls = model.image_calls
    reference = session.index(scene, reference=True)
    assert model.image_calls > calls and reference is not fast
    assert fast.meta["plan"]["reference"] is False and reference.meta["plan"]["reference"] is True
    plan = plan_windows(256, 256, (64,))
    assert plan_meta(plan, True, 0.25) == {**plan.to_json(), "reference": True, "min_valid": 0.25}


def test_whole_raster_index_stays_warm_after_an_aoi_reused_it(tmp_path: Path) -> None:
    """An AOI answered from the whole raster's index leaves that index warm in memory."""
    scene = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    model = RednessModel()
    session = _session(tmp_path, model)
    whole = session.index(scene)
    calls = model.image_calls
    aoi = (500000 + 1200, 4000000 - 1500, 500000 + 2500, 4000000 - 100)
    session.query(scene, "red", aoi=aoi)  # miss, answered from the whole index in memory
    assert session.cache_info() == (0, 2, 8, 2)
    seen: list[str] = []
    session.query(scene, "red", progress=lambda f, m: seen.append(m))
    assert session.cache_info() == (1, 2, 8, 2) and model.image_calls == calls
    assert seen[0] == f"embedding index of scene.tif is warm ({len(whole)} windows)"
    assert session.index(scene) is whole


class _DeclaredDim(RednessModel):
    embed_dim = 2  # the redness embedding's length


def test_index_build_asks_for_the_space_its_files_take(tmp_path: Path, monkeypatch) -> None:
    """Free space check: windows int64 x 4, footprints float64 x 4, embeddings float32 x dim,
    plus 1 MiB; refused one byte short of that, built with exactly that."""
    import dgtrs_geo.localization.writers as writers

    scene = _raster(tmp_path / "scene.tif", "EPSG:32633", TRANSFORM)
    n = len(_windows(256, 256, 64))  # no nodata: every window is kept
    needed = n * (4 * 8 + 4 * 8 + 4 * 2) + 2**20
    monkeypatch.setattr(writers, "disk_free", lambda path: needed - 1)
    with pytest.raises(OutputError, match="MiB are needed: free space there"):
        _session(tmp_path, _DeclaredDim()).index(scene)
    monkeypatch.setattr(writers, "disk_free", lambda path: needed)
    index = _session(tmp_path, _DeclaredDim()).index(scene)
    assert len(index) == n
    on_disk = sum(p.stat().st_size for p in index.path.rglob("*") if p.is_file())
    assert on_disk <= needed  # an upper bound indeed


# --- nodata and smoothing on the heatmap grid --------------------------------------------------


def test_nodata_is_nan_on_a_cell_size_other_than_the_stored_mask(tmp_path: Path) -> None:
    """``cell=8`` (the index stores the 4 px grid's mask): nodata columns 0..95 are still NaN."""
    raster = _raster(tmp_path / "nd.tif", "EPSG:32633", from_origin(0, 256, 1, 1), nodata_cols=96)
    (result,) = _session(tmp_path).query(raster, "red", cell=8)
    assert result.heatmap.shape == (32, 32)
    assert np.isnan(result.heatmap[:, :12]).all() and np.isfinite(result.heatmap[:, 12:]).all()


def test_an_aoi_index_stores_the_mask_of_the_aoi(tmp_path: Path) -> None:
    """AOI columns 64..256 of a raster whose columns 0..95 are nodata: the first 8 cells NaN."""
    raster = _raster(tmp_path / "nd.tif", "EPSG:32633", from_origin(0, 256, 1, 1), nodata_cols=96)
    index = build_index(raster, RednessModel(), scales=(64,), aoi=(64, 0, 256, 256),
                        index_dir=tmp_path / "idx")  # fmt: skip
    assert index.valid.shape == (64, 48)  # 192 x 256 px in 4 px cells
    assert not index.valid[:, :8].any() and index.valid[:, 8:].all()
    (result,) = _session(tmp_path).query(raster, "red", aoi=(64, 0, 256, 256))
    assert np.isnan(result.heatmap[:, :8]).all() and np.isfinite(result.heatmap[:, 8:]).all()


def _gsd_at_centre(transform, width: int, height: int) -> float:
    """Metres per pixel of a degree raster at its centre, from pyproj's geodesic alone."""
    geod = Geod(ellps="WGS84")
    cx, cy = transform @ (width / 2, height / 2)
    ex, ey = transform @ (width / 2 + 1, height / 2)
    sx, sy = transform @ (width / 2, height / 2 + 1)
    return (geod.inv(cx, cy, ex, ey)[2] + geod.inv(cx, cy, sx, sy)[2]) / 2


@pytest.mark.parametrize(
    ("crs", "transform", "smooth"),
    [(None, from_origin(0, 256, 1, 1), 8.0), ("EPSG:4326", from_origin(10, 50, 1e-4, 1e-4), 40.0)],
    ids=["pixels-without-crs", "metres-on-degrees"],
)
def test_smooth_is_a_gaussian_of_sigma_in_pixels_or_metres(
    tmp_path: Path, crs, transform, smooth: float
) -> None:
    """``smooth`` is pixels without a CRS, ground metres on a degree raster; 4 px cells here."""
    raster = _raster(tmp_path / "s.tif", crs, transform)
    session = _session(tmp_path, normalise="cosine")
    (raw,) = session.query(raster, "red", smooth=0)
    (smoothed,) = session.query(raster, "red", smooth=smooth)
    sigma_px = smooth if crs is None else smooth / _gsd_at_centre(transform, 256, 256)
    expected = ndimage.gaussian_filter(raw.heatmap.astype(float), sigma_px / 4, mode="nearest")
    np.testing.assert_allclose(smoothed.heatmap, expected, atol=1e-5)
    assert np.abs(smoothed.heatmap - raw.heatmap).max() > 0.01  # smoothing did something
