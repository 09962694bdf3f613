"""CLIP architectures: the project's open_clip configs, and configs inferred from weights.

The DGTRS-CLIP configs ship as open_clip JSON files (``configs/``) and are registered with
open_clip on import, so ``open_clip.create_model("DGTRS-ViT-B-16")`` works too. Checkpoints that
carry no config are read the way OpenAI's builder reads them: every size from a tensor shape,
attention heads = width // 64 in both towers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
from torch import Tensor

from ..errors import ModelError

__all__ = ["ARCHITECTURES", "architecture_config", "create_clip", "infer_config"]

_CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(_CONFIG_DIR)

#: Short names used across the project -> open_clip config names.
ARCHITECTURES: dict[str, str] = {
    "dgtrs-vit-b-16": "DGTRS-ViT-B-16",
    "dgtrs-vit-l-14": "DGTRS-ViT-L-14",
    "dgtrs-tiny": "DGTRS-tiny",
}


def architecture_config(arch: str) -> dict[str, Any]:
    """Return a copy of the open_clip config for ``arch``.

    Args:
        arch: a short name from :data:`ARCHITECTURES` or any open_clip model name
            (``"ViT-B-32"``, ``"ViT-B-16-quickgelu"``, ...).

    Raises:
        ModelError: if open_clip knows no such architecture (a ``ValueError`` too).

    """
    config = open_clip.get_model_config(ARCHITECTURES.get(arch, arch))
    if config is None:
        known = ", ".join(ARCHITECTURES)
        raise ModelError(
            f"unknown architecture {arch!r}: use one of {known} or an open_clip model name"
        )
    return copy.deepcopy(config)


def create_clip(
    arch: str | Mapping[str, Any],
    *,
    quick_gelu: bool | None = None,
    context_length: int | None = None,
) -> open_clip.CLIP:
    """Build a randomly initialised open_clip ``CLIP``.

    Args:
        arch: architecture name (see :func:`architecture_config`) or an open_clip config dict.
        quick_gelu: override the config's activation (OpenAI-trained weights need QuickGELU).
        context_length: override the text context length (e.g. 77 before KPS).

    Returns:
        The model in eval mode, float32, on the CPU.

    """
    config = architecture_config(arch) if isinstance(arch, str) else copy.deepcopy(dict(arch))
    if quick_gelu is not None:
        config["quick_gelu"] = quick_gelu
    if context_length is not None:
        config["text_cfg"]["context_length"] = context_length
    for key in [
        k for k in config if k not in ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg")
    ]:
        config.pop(key)  # open_clip configs may carry fields (custom_text, ...) CLIP does not take
    return open_clip.CLIP(**config).eval()


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return len({m.group(1) for key in state_dict if (m := pattern.match(key))})


def infer_config(state_dict: Mapping[str, Tensor], *, quick_gelu: bool = True) -> dict[str, Any]:
    """Infer an open_clip config from an OpenAI-layout CLIP state dict (ViT or ModifiedResNet).

    Args:
        state_dict: tensors with OpenAI/open_clip ``CLIP`` key names.
        quick_gelu: activation to record in the config.

    Raises:
        KeyError: naming the first tensor the inference needs but the state dict lacks.

    """
    required = [
        "text_projection",
        "positional_embedding",
        "token_embedding.weight",
        "ln_final.weight",
    ]
    for key in required:
        if key not in state_dict:
            raise KeyError(
                f"missing tensor {key!r}: not a CLIP state dict in OpenAI/open_clip layout"
            )
    if "visual.proj" in state_dict:
        conv = state_dict["visual.conv1.weight"]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg: dict[str, Any] = {
            "image_size": conv.shape[-1] * grid,
            "layers": _count_blocks(state_dict, "visual.transformer.resblocks."),
            "width": conv.shape[0],
            "patch_size": conv.shape[-1],
            "head_width": 64,
        }
    elif "visual.attnpool.positional_embedding" in state_dict:
        grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {
            "image_size": grid * 32,
            "layers": [_count_blocks(state_dict, f"visual.layer{i}.") for i in range(1, 5)],
            "width": state_dict["visual.layer1.0.conv1.weight"].shape[0],
            "head_width": 64,
        }
    else:
        raise KeyError("missing tensor 'visual.proj' (ViT) or 'visual.attnpool.*' (ResNet)")
    width = state_dict["ln_final.weight"].shape[0]
    text_cfg = {
        "context_length": state_dict["positional_embedding"].shape[0],
        "vocab_size": state_dict["token_embedding.weight"].shape[0],
        "width": width,
        "heads": max(1, width // 64),
        "layers": _count_blocks(state_dict, "transformer.resblocks."),
    }
    return {
        "embed_dim": state_dict["text_projection"].shape[1],
        "quick_gelu": quick_gelu,
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }
