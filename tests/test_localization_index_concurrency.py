"""Processes that build, rebuild and read one index at once never crash or see half an index.

Three spawned processes each make six ``localize`` calls on one raster with the tiny model,
alternating plain calls and ``rebuild=True``, so rebuilds replace the index while other processes
read it. Every answer must be complete and identical to the others.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

PROCESSES = 3
CALLS = 6


def _calls(args: tuple[str, str, str, int]) -> list[np.ndarray]:
    raster, checkpoint, index_dir, worker = args
    import torch

    import dgtrs_geo
    from dgtrs_geo.localization import localize

    torch.set_num_threads(1)
    model = dgtrs_geo.load_model(checkpoint)
    maps = []
    for call in range(CALLS):
        (result,) = localize(
            raster,
            "a red roof",
            model,
            scales=(32, 64),
            index_dir=index_dir,
            rebuild=(call + worker) % 2 == 1,
        )
        maps.append(result.heatmap)
    return maps


@pytest.mark.slow
def test_concurrent_builds_rebuilds_and_reads_agree(tmp_path: Path, tiny_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    raster = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 160, "height": 128, "count": 3, "dtype": "uint8"}
    transform = from_origin(500000, 4000000, 10, 10)
    with rasterio.open(raster, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(rng.integers(0, 255, (3, 128, 160), dtype=np.uint8))
    index_dir = tmp_path / "idx"
    jobs = [(str(raster), str(tiny_checkpoint), str(index_dir), w) for w in range(PROCESSES)]
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        answers = [m for maps in pool.map(_calls, jobs) for m in maps]
    assert len(answers) == PROCESSES * CALLS
    for heatmap in answers:
        assert heatmap.shape == answers[0].shape and np.isfinite(heatmap).all()
        np.testing.assert_allclose(heatmap, answers[0], rtol=0, atol=1e-6)
    assert len(list(index_dir.glob("*.dgtrs-index"))) == 1
    assert [p.name for p in index_dir.iterdir() if p.name.startswith(".")] == []
