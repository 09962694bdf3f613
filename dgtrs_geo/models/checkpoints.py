"""Checkpoint formats: detect, read into an open_clip ``CLIP`` state dict, and write.

Formats read (all through ``torch.load(..., weights_only=True)``; TorchScript archives through
``torch.jit.load``, which runs no Python pickle code):

- ``dgtrs``: the DGTRS-CLIP / Long-CLIP release, OpenAI key names with two 248-row positional
  tables, folded as ``cat(positional_embedding[:keep], positional_embedding_res[keep:])``.
- ``open_clip``: a plain open_clip ``CLIP`` state dict (GeoRSCLIP, RemoteCLIP, SkyCLIP, ...).
- ``openai``: OpenAI's CLIP state dict (``input_resolution``, ``context_length``, ``vocab_size``
  entries) or its TorchScript archive.
- ``lightning``: this project's Lightning checkpoints (``state_dict`` under ``model.``).

Formats written: ``dgtrs`` (loads in the authors' code) and ``open_clip``.

Weights that hold NaN or infinity are refused on reading: they would embed everything as NaN and
every score and map downstream would be NaN without any other error.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from ..errors import InputError, ModelError, OutputError
from ..tokens import KPS_KEEP

if TYPE_CHECKING:
    from open_clip import CLIP

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointNotFoundError",
    "KPS_KEEP",
    "check_finite",
    "detect_format",
    "fold_dgtrs_state_dict",
    "read_checkpoint",
    "save_checkpoint",
    "unfold_dgtrs_state_dict",
]

CheckpointFormat = Literal["dgtrs", "open_clip", "openai", "lightning"]
FORMATS: tuple[str, ...] = ("dgtrs", "open_clip", "openai", "lightning")

_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_LIGHTNING_PREFIX = "model."
# The fix named when a format given by the caller does not match the file.
_FORCED_FORMAT_FIX = "if the file is another format, leave the format to detection"


class CheckpointError(ModelError):
    """A file that cannot be read as a CLIP checkpoint; the message says what it is instead."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist (and is no registered model name either)."""


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _torch_load(path: Path) -> object:
    """Load ``path`` with ``weights_only=True``, turning every failure into a clear message."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): expected a PyTorch checkpoint (.pt)")
    with path.open("rb") as file:
        magic = file.read(4)
    # torch.save writes a zip archive; legacy files start with a pickle protocol marker.
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (it starts with {magic!r}, expected a zip "
            "archive or a pickle written by torch.save)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{path} is a pickle that carries Python objects besides tensors; it was refused "
                "because loading it could run code. Expected a state dict of tensors (re-save it "
                "with torch.save(model.state_dict(), path)). Detail: " + str(error).splitlines()[-1]
            ) from error
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({error})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt, or not a PyTorch checkpoint: {error}. "
            "Download it again (a partial download leaves such a file)."
        ) from error


def detect_format(payload: Mapping[str, object]) -> CheckpointFormat:
    """Return the format of a loaded checkpoint dictionary.

    Raises:
        CheckpointError: if the dictionary matches no supported format.

    """
    if "state_dict" in payload and (
        "pytorch-lightning_version" in payload or "hyper_parameters" in payload
    ):
        return "lightning"
    if "positional_embedding_res" in payload:
        return "dgtrs"
    if any(key in payload for key in _OPENAI_EXTRAS):
        return "openai"
    if "positional_embedding" in payload or "text_projection" in payload:
        return "open_clip"
    keys = ", ".join(list(payload)[:5]) or "none"
    raise CheckpointError(
        f"no CLIP weights found (first keys: {keys}); expected a DGTRS/Long-CLIP, open_clip, "
        "OpenAI CLIP or dgtrs-geo Lightning checkpoint"
    )


def fold_dgtrs_state_dict(
    state_dict: Mapping[str, Tensor], keep: int = KPS_KEEP
) -> dict[str, Tensor]:
    """Fold the release's two positional tables into the single table open_clip uses.

    Raises:
        CheckpointError: if either table is missing or their shapes differ.

    """
    folded = dict(state_dict)
    for table in ("positional_embedding", "positional_embedding_res"):
        if table not in folded:
            raise CheckpointError(f"DGTRS checkpoint lacks {table!r}: {_FORCED_FORMAT_FIX}")
    frozen, trained = folded["positional_embedding"], folded.pop("positional_embedding_res")
    if frozen.shape != trained.shape:
        raise CheckpointError(
            f"'positional_embedding' {tuple(frozen.shape)} and 'positional_embedding_res' "
            f"{tuple(trained.shape)} must have the same shape"
        )
    folded["positional_embedding"] = torch.cat([frozen[:keep], trained[keep:]], dim=0)
    return folded


def unfold_dgtrs_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Split a single positional table into the release's two tables (both full copies).

    The authors' code selects rows ``< 20`` from the first and rows ``>= 20`` from the second;
    writing the folded table into both gives the same effective table for any ``keep``.
    """
    unfolded = dict(state_dict)
    table = unfolded["positional_embedding"]
    unfolded["positional_embedding"] = table.clone()
    unfolded["positional_embedding_res"] = table.clone()
    return unfolded


def _strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _from_lightning(payload: Mapping[str, object]) -> dict[str, Tensor]:
    state = payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"not a Lightning checkpoint (no 'state_dict' dictionary): {_FORCED_FORMAT_FIX}"
        )
    weights = {
        key[len(_LIGHTNING_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(_LIGHTNING_PREFIX)
    }
    if not weights:
        raise CheckpointError(
            "Lightning checkpoint has no 'model.*' weights: not a DGTRSCLIPTask checkpoint"
        )
    # A training checkpoint stores the frozen prefix parametrization: fold it back to one table.
    original = weights.pop("parametrizations.positional_embedding.original", None)
    prefix = weights.pop("parametrizations.positional_embedding.0.prefix", None)
    if original is not None:
        keep = 0 if prefix is None else prefix.shape[0]
        table = original if prefix is None else torch.cat([prefix, original[keep:]], dim=0)
        weights["positional_embedding"] = table
    return weights


def read_checkpoint(
    path: str | Path, checkpoint_format: CheckpointFormat | None = None
) -> tuple[dict[str, Tensor], CheckpointFormat]:
    """Read any supported checkpoint as an open_clip ``CLIP`` state dict.

    Args:
        path: the checkpoint file.
        checkpoint_format: skip detection and read as this format.

    Returns:
        ``(state_dict, format)``; the state dict has open_clip key names and one positional table.

    Raises:
        CheckpointNotFoundError: if ``path`` does not exist (a ``FileNotFoundError`` too).
        CheckpointError: if the file is corrupt, unsafe, or not a CLIP checkpoint.
        InputError: for an unknown ``checkpoint_format``.

    """
    path = Path(path)
    if checkpoint_format is not None and checkpoint_format not in FORMATS:
        raise InputError(f"unknown checkpoint format {checkpoint_format!r}: use one of {FORMATS}")
    if _is_torchscript(path):
        # torch.jit.load is not annotated; a TorchScript archive runs no pickle code.
        archive = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        payload: object = archive.state_dict()
        checkpoint_format = checkpoint_format or "openai"
    else:
        payload = _torch_load(path)
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(payload).__name__}, not a dictionary of tensors: expected a state dict"
        )
    # A DDP-wrapped model saves its keys under "module.": detect and read them without it.
    payload = _strip_prefix(payload, "module.")
    checkpoint_format = checkpoint_format or detect_format(payload)
    match checkpoint_format:
        case "lightning":
            state = _from_lightning(payload)
        case "dgtrs":
            state = fold_dgtrs_state_dict(payload)
        case "openai" | "open_clip":
            state = payload
    # Metadata entries and the causal mask are rebuilt from the architecture, never read.
    for key in [k for k in state if k in _OPENAI_EXTRAS or k.endswith("attn_mask")]:
        state.pop(key)
    not_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries {not_tensors[:3]} are not tensors")
    # OpenAI's files hold half-precision weights; the engine works in float32 and casts on the fly.
    state = {
        key: value.float() if value.is_floating_point() else value for key, value in state.items()
    }
    check_finite(state, path)
    return state, checkpoint_format


def check_finite(state: Mapping[str, Tensor], source: str | Path) -> None:
    """Refuse weights that hold NaN or infinity, naming the first such tensor.

    A sum is finite only if every term is, so finite weights cost one reduction per tensor and
    no temporary mask; the element-wise test runs only where a sum is not finite, which finite
    values can also give by overflowing.

    Args:
        state: tensors by key, in the order they are checked.
        source: what to call the weights in the message (usually the file).

    Raises:
        CheckpointError: at the first tensor with a non-finite value.

    """
    for key, value in state.items():
        if not value.is_floating_point() or bool(torch.isfinite(value.sum())):
            continue
        if bad := int((~torch.isfinite(value)).sum()):
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s) out of "
                f"{value.numel()}; every embedding of this model would be NaN. The weights are "
                "broken (a diverged training run or a damaged file): use another checkpoint, "
                "or an earlier one of the same run."
            )


def plain_state_dict(clip: CLIP) -> dict[str, Tensor]:
    """Return ``clip``'s weights with one plain positional table (no training parametrization)."""
    state = {}
    for key, value in clip.state_dict().items():
        if key.startswith("parametrizations."):
            continue
        state[key] = value.detach().cpu().clone()
    if parametrize.is_parametrized(clip, "positional_embedding"):
        state["positional_embedding"] = clip.positional_embedding.detach().cpu().clone()
    return state


def save_checkpoint(
    clip: CLIP, path: str | Path, format: Literal["dgtrs", "open_clip"] = "dgtrs"
) -> Path:
    """Write ``clip``'s weights so other code can load them.

    Args:
        clip: an open_clip ``CLIP`` (possibly with frozen positional rows).
        path: destination ``.pt`` file, written atomically.
        format: ``"dgtrs"`` for the authors' code (two positional tables) or ``"open_clip"``.

    Returns:
        The written path.

    Raises:
        InputError: for a format other than ``"dgtrs"`` or ``"open_clip"``.
        OutputError: if ``path`` cannot be written (read-only folder, a directory, disk full);
            no partial file is left.

    """
    path = Path(path)
    state = plain_state_dict(clip)
    match format:
        case "dgtrs":
            state = unfold_dgtrs_state_dict(state)
        case "open_clip":
            pass
        case _:
            raise InputError(f"cannot write format {format!r}: use 'dgtrs' or 'open_clip'")
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Through a file object: torch.save to a path reports a full disk as a RuntimeError
        # ("unexpected pos"); Python's own write raises the OSError that says so.
        with partial.open("wb") as file:
            torch.save(state, file)
        partial.replace(path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OutputError(
                f"cannot write the checkpoint {path}: {error.strerror or error}; choose a "
                "writable location with free space"
            ) from error
        raise
    return path
