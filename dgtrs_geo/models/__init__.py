"""DGTRS-CLIP and every other CLIP users bring: architectures, KPS, checkpoints, registry."""

from .architecture import ARCHITECTURES, architecture_config, create_clip, infer_config
from .checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    detect_format,
    read_checkpoint,
    save_checkpoint,
)
from .factory import EmbeddingModel, TextTruncationWarning, build_clip, load_model
from .kps import freeze_positional_prefix, stretch_positional_embedding
from .registry import REGISTRY, WeightsUnavailableError, cache_dir, registry_status

__all__ = [
    "ARCHITECTURES",
    "REGISTRY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "EmbeddingModel",
    "TextTruncationWarning",
    "WeightsUnavailableError",
    "architecture_config",
    "build_clip",
    "cache_dir",
    "create_clip",
    "detect_format",
    "freeze_positional_prefix",
    "infer_config",
    "load_model",
    "read_checkpoint",
    "registry_status",
    "save_checkpoint",
    "stretch_positional_embedding",
]
