"""`dgtrs-geo localize` / `index` flags, each checked by its effect on the files written.

The expected heatmaps come from the tiny model's window embeddings computed here, one window at
a time: 32 px windows are the tiny model's input size, so no resize stands between the pixels and
``encode_image``, and 2 m pixels make ``--smooth`` metres convertible by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage

from dgtrs_geo.cli import main

PIXEL = 2.0  # metres
SCALE = 32  # px: the tiny model's image size
QUERY = "a red roof"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, size=(96, 128, 3)).astype(np.uint8)
    image[10:40, 20:60] = (230, 40, 30)
    path = tmp_path_factory.mktemp("cli-scene") / "scene.tif"
    profile = {"driver": "GTiff", "width": 128, "height": 96, "count": 3, "dtype": "uint8"}
    with rasterio.open(
        path, "w", crs="EPSG:32631", transform=from_origin(600000, 5500000, PIXEL, PIXEL), **profile
    ) as dst:
        dst.write(image.transpose(2, 0, 1))
    return path, image


def _windows(height: int, width: int, s: int) -> list[tuple[int, int]]:
    return sorted(
        {
            (min(x, width - s), min(y, height - s))
            for offset in (0, s // 2)
            for y in range(offset, height, s)
            for x in range(offset, width, s)
        }
    )


@pytest.fixture(scope="module")
def window_cosines(scene, tiny_model) -> tuple[np.ndarray, float]:
    """Per-pixel mean cosine of the windows covering each pixel, and the best window's cosine."""
    _, image = scene
    height, width = image.shape[:2]
    windows = _windows(height, width, SCALE)
    mean = torch.tensor(tiny_model.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_model.std).view(1, 3, 1, 1)
    crops = torch.stack(
        [torch.from_numpy(image[y : y + SCALE, x : x + SCALE].copy()) for x, y in windows]
    )
    pixels = crops.permute(0, 3, 1, 2).float() / 255
    embeddings = tiny_model.encode_image((pixels - mean) / std).numpy()
    scores = embeddings @ tiny_model.encode_text([QUERY])[0].numpy()
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for (x, y), score in zip(windows, scores, strict=True):
        total[y : y + SCALE, x : x + SCALE] += score
        count[y : y + SCALE, x : x + SCALE] += 1
    return total / count, float(scores.max())


def _localize(scene, checkpoint, out: Path, *flags: str, capsys=None) -> np.ndarray:
    raster, _ = scene
    args = ["localize", str(raster), QUERY, "-o", str(out), "--model", str(checkpoint)]
    args += ["--scales", str(SCALE), "--device", "cpu", "--index-dir", str(out.parent / "idx")]
    assert main([*args, *flags]) == 0
    (tif,) = out.glob("*.tif")
    with rasterio.open(tif) as src:
        return src.read(1)


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def test_normalise_cosine_with_smooth_0_is_the_mean_window_cosine(
    scene, tiny_checkpoint, window_cosines, tmp_path
) -> None:
    expected, _ = window_cosines
    heat = _localize(scene, tiny_checkpoint, tmp_path / "out", "--normalise", "cosine",
                     "--smooth", "0")  # fmt: skip
    # Cells of 32 / 16 = 2 px; window edges fall on multiples of 16, so each cell is uniform.
    assert heat.shape == (48, 64)
    np.testing.assert_allclose(heat, expected[::2, ::2], atol=1e-5)
    # Raw cosines, not [0, 1]: min-max would make the smallest value 0.
    assert heat.min() == pytest.approx(expected.min(), abs=1e-5) and abs(heat.min()) > 1e-3


def test_minmax_default_and_smooth_in_metres(
    scene, tiny_checkpoint, window_cosines, tmp_path
) -> None:
    expected, _ = window_cosines
    cells = expected[::2, ::2]
    plain = _localize(scene, tiny_checkpoint, tmp_path / "a", "--smooth", "0")
    np.testing.assert_allclose(plain, _minmax(cells), atol=1e-5)
    # 20 m at 2 m pixels is 10 px, 5 cells of 2 px (as pixels it would be 10 cells).
    smoothed = _localize(scene, tiny_checkpoint, tmp_path / "b", "--smooth", "20")
    np.testing.assert_allclose(
        smoothed, _minmax(ndimage.gaussian_filter(cells, 5.0, mode="nearest")), atol=1e-4
    )
    assert np.abs(smoothed - plain).max() > 0.05
    # No --smooth: a quarter of the smallest window, 8 px = 4 cells.
    default = _localize(scene, tiny_checkpoint, tmp_path / "c")
    np.testing.assert_allclose(
        default, _minmax(ndimage.gaussian_filter(cells, 4.0, mode="nearest")), atol=1e-4
    )


@pytest.mark.parametrize("flag", ["--reference-mode", "--reference"])
def test_reference_mode_writes_the_published_recipes_map(
    scene, tiny_checkpoint, tiny_model, tmp_path, flag: str
) -> None:
    from dgtrs_geo.localization import reference_probability_map

    _, image = scene
    heat = _localize(scene, tiny_checkpoint, tmp_path / "out", flag)
    expected = reference_probability_map(image, QUERY, tiny_model, scales=(SCALE,))
    assert heat.shape == image.shape[:2]
    np.testing.assert_allclose(heat, expected, atol=1e-6)


def test_json_reports_the_best_cell_and_the_best_window(
    scene, tiny_checkpoint, window_cosines, tmp_path, capsys
) -> None:
    expected, best_window = window_cosines
    capsys.readouterr()
    heat = _localize(scene, tiny_checkpoint, tmp_path / "out", "--smooth", "0", "--json")
    out = capsys.readouterr().out
    # The JSON array follows the one-line summaries.
    (result,) = json.loads(out[out.index("\n[") + 1 :])
    assert result["query"] == QUERY and result["mode"] == "fast"
    assert result["normalise"] == "minmax" and result["threshold"] == 0.5
    assert result["score_max"] == pytest.approx(best_window, abs=1e-5)
    row, col = np.unravel_index(np.argmax(expected[::2, ::2]), heat.shape)
    # The centre of the best 2 px cell, in map coordinates.
    assert result["best"] == pytest.approx(
        [600000 + (2 * col + 1) * PIXEL, 5500000 - (2 * row + 1) * PIXEL], abs=1e-3
    )
    assert result["shape"] == [48, 64]
    assert sorted(result["paths"]) == ["heatmap", "overlay", "polygons"]
    assert all(Path(p).is_file() for p in result["paths"].values())


def test_no_overlay_writes_no_png(scene, tiny_checkpoint, tmp_path) -> None:
    _localize(scene, tiny_checkpoint, tmp_path / "with")
    assert sorted(p.suffix for p in (tmp_path / "with").iterdir()) == [".gpkg", ".png", ".tif"]
    _localize(scene, tiny_checkpoint, tmp_path / "without", "--no-overlay")
    assert sorted(p.suffix for p in (tmp_path / "without").iterdir()) == [".gpkg", ".tif"]


def test_index_rebuild_encodes_again(scene, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from dgtrs_geo.models import EmbeddingModel

    raster, _ = scene
    calls: list[int] = []
    original = EmbeddingModel.encode_image

    def counted(self, images, *args, **kwargs):
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(EmbeddingModel, "encode_image", counted)
    args = ["index", str(raster), "--model", str(tiny_checkpoint), "--scales", str(SCALE)]
    args += ["--device", "cpu", "--index-dir", str(tmp_path / "idx")]
    assert main(args) == 0
    windows = len(_windows(96, 128, SCALE))
    assert sum(calls) == windows
    assert main(args) == 0
    assert sum(calls) == windows  # reused
    assert main([*args, "--rebuild"]) == 0
    assert sum(calls) == 2 * windows
    assert len(list((tmp_path / "idx").glob("*.dgtrs-index"))) == 1  # rebuilt in place
