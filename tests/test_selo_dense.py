"""Dense (patch-level) maps: the patch readings against open_clip's own modules, the per-pixel
mean against a brute-force loop, and the maps' contract."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgtrs_geo.localization.dense import (
    DENSE_METHODS,
    dense_probability_maps,
    encode_dense,
    encode_patches,
    patch_grid,
    patch_index_bytes,
    patch_mean_map,
)


def _last_block_input(model, pixels: torch.Tensor) -> torch.Tensor:
    """The tokens entering the last block during open_clip's own encode_image."""
    captured = {}
    last = model.clip.visual.transformer.resblocks[-1]
    handle = last.register_forward_pre_hook(lambda _, args: captured.setdefault("x", args[0]))
    try:
        model.clip.encode_image(pixels)
    finally:
        handle.remove()
    return captured["x"]


@torch.inference_mode()
def _expected_patches(model, pixels: torch.Tensor, method: str) -> torch.Tensor:
    visual = model.clip.visual
    last = visual.transformer.resblocks[-1]
    x = _last_block_input(model, pixels)
    tokens = x.shape[1]
    if method == "maskclip":
        # Attention restricted to the token itself (a -inf mask off the diagonal) is its value.
        diagonal = torch.full((tokens, tokens), float("-inf"))
        diagonal.fill_diagonal_(0.0)
        out = last(x, attn_mask=diagonal)
    else:
        # Query-query attention: a copy of the attention whose key projection is the query's.
        attention = copy.deepcopy(last.attn)
        width = x.shape[-1]
        attention.in_proj_weight.data[width : 2 * width] = attention.in_proj_weight[:width]
        attention.in_proj_bias.data[width : 2 * width] = attention.in_proj_bias[:width]
        y = last.ln_1(x)
        out = attention(y, y, y, need_weights=False)[0]
    patches = visual.ln_post(out[:, 1:]) @ visual.proj
    return F.normalize(patches, dim=-1)


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_patches_against_open_clip_modules(tiny_model, method: str) -> None:
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, tiny_model.image_size, tiny_model.image_size)
    window, patches = encode_patches(tiny_model, pixels, method)
    grid = patch_grid(tiny_model)
    assert patches.shape == (3, grid, grid, tiny_model.embed_dim)
    torch.testing.assert_close(window, tiny_model.encode_image(pixels), atol=1e-6, rtol=0)
    expected = _expected_patches(tiny_model, pixels, method).reshape(patches.shape)
    torch.testing.assert_close(patches, expected, atol=1e-5, rtol=0)
    assert torch.allclose(patches.norm(dim=-1), torch.ones(3, grid, grid), atol=1e-5)


def test_the_two_methods_differ(tiny_model) -> None:
    pixels = torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size)
    a = encode_patches(tiny_model, pixels, "maskclip")[1]
    b = encode_patches(tiny_model, pixels, "clearclip")[1]
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="dense method"):
        encode_patches(tiny_model, pixels, "sclip")


def test_patch_mean_map_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    height, width, grid = 37, 45, 3
    windows = np.array([[0, 0, 30, 30], [15, 7, 30, 30], [10, 20, 17, 17], [0, 0, 45, 37]])
    scores = rng.normal(size=(len(windows), grid, grid))
    sums, counts = np.zeros((height, width)), np.zeros((height, width))
    for (x, y, w, h), patch_scores in zip(windows, scores, strict=True):
        for i in range(grid):
            for j in range(grid):
                rows = slice(round(y + i * h / grid), round(y + (i + 1) * h / grid))
                cols = slice(round(x + j * w / grid), round(x + (j + 1) * w / grid))
                sums[rows, cols] += patch_scores[i, j]
                counts[rows, cols] += 1
    expected = sums / np.maximum(counts, 1)
    np.testing.assert_allclose(
        patch_mean_map(windows, scores, (height, width)), expected, atol=1e-9
    )


@pytest.mark.parametrize(
    "window", [[-1, 0, 10, 10], [0, -3, 10, 10], [36, 0, 10, 10], [0, 28, 10, 10]]
)
def test_patch_mean_map_refuses_windows_outside_the_map(window: list[int]) -> None:
    # A negative offset would wrap round to the other side; one past the edge would crash.
    windows = np.array([[0, 0, 10, 10], window])
    with pytest.raises(
        ValueError,
        match=rf"window \[{window[0]}, {window[1]}, 10, 10\] is not inside the 37 x 45 map",
    ):
        patch_mean_map(windows, np.ones((2, 1, 1)), (37, 45))


def test_encode_dense_matches_window_encoding(tiny_model) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    windows = np.array([[0, 0, 64, 64], [16, 32, 64, 64], [0, 0, 48, 48]])
    embeddings, patches = encode_dense(tiny_model, image, windows, batch_size=1)
    assert patches.shape == (3, patch_grid(tiny_model), patch_grid(tiny_model), 32)
    from dgtrs_geo.localization.encode import preprocess_batch

    for (x, y, w, h), embedding in zip(windows, embeddings, strict=True):
        crop = torch.from_numpy(image[y : y + h, x : x + w].transpose(2, 0, 1).copy())[None]
        direct = tiny_model.encode_image(preprocess_batch(crop, tiny_model))[0]
        np.testing.assert_allclose(embedding, direct.numpy(), atol=1e-6)


def test_dense_maps_contract(tiny_model) -> None:
    image = np.random.default_rng(2).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    maps = dense_probability_maps(image, ["a red circle", "a blue square"], tiny_model, (64, 128))
    assert len(maps) == 2
    for prob_map in maps:
        assert prob_map.shape == (160, 200) and prob_map.dtype == np.float32
        assert prob_map.min() == 0.0 and prob_map.max() == 1.0
    assert np.abs(maps[0] - maps[1]).max() > 0
    with pytest.raises(ValueError, match="describe"):
        dense_probability_maps(image, [" "], tiny_model, (64,))


def test_non_vit_towers_are_refused() -> None:
    other = SimpleNamespace(clip=SimpleNamespace(visual=torch.nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="VisionTransformer"):
        patch_grid(other)


def test_patch_index_bytes() -> None:
    # ViT-B/16 at 224 px: 14 x 14 patches of 512 float16 values = 200,704 bytes per window.
    assert patch_index_bytes(1, 14, 512) == 200_704
    assert patch_index_bytes(10, 4, 32, bytes_per_value=4) == 10 * 16 * 32 * 4


def test_window_weight_one_gives_the_window_level_map(tiny_model) -> None:
    from scipy.ndimage import gaussian_filter

    from dgtrs_geo.localization.encode import preprocess_batch
    from dgtrs_geo.localization.windows import plan_windows

    image = np.random.default_rng(3).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    (got,) = dense_probability_maps(image, ["a red circle"], tiny_model, (64,), window_weight=1.0)
    text = tiny_model.encode_text(["a red circle"])[0]
    sums, counts = np.zeros((128, 160)), np.zeros((128, 160))
    for x, y, w, h in plan_windows(160, 128, (64,)).windows:
        crop = torch.from_numpy(image[y : y + h, x : x + w].transpose(2, 0, 1).copy())[None]
        score = float(tiny_model.encode_image(preprocess_batch(crop, tiny_model))[0] @ text)
        sums[y : y + h, x : x + w] += score
        counts[y : y + h, x : x + w] += 1
    mean = gaussian_filter(sums / counts, 64 / patch_grid(tiny_model) / 2, mode="nearest")
    expected = (mean - mean.min()) / (mean.max() - mean.min())
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="window_weight"):
        dense_probability_maps(image, ["x"], tiny_model, (64,), window_weight=1.5)
