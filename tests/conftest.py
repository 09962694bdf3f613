"""Shared fixtures: tiny random-weight DGTRS-CLIP checkpoints (no test downloads anything)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's model and index cache out of the user's home."""
    monkeypatch.setenv("DGTRS_GEO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny DGTRS-CLIP in the authors' release format (image 32 px, embed 32, 248 tokens)."""
    from dgtrs_geo.models import create_clip, save_checkpoint

    torch.manual_seed(0)
    clip = create_clip("dgtrs-tiny")
    return save_checkpoint(clip, tmp_path_factory.mktemp("ckpt") / "dgtrs-tiny.pt", format="dgtrs")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    """The tiny checkpoint loaded through the public API."""
    import dgtrs_geo

    return dgtrs_geo.load_model(tiny_checkpoint)
