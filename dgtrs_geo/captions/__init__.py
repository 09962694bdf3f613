"""Build a DGTRSD-style dataset: captions written and judged by language models.

The four steps of the paper's data pipeline, each a resumable run that appends rows to a DGTRSD
JSONL manifest: ``long`` (image + short caption -> long caption within 248 CLIP tokens),
``short`` (long -> short), ``masks`` (segmentation mask layout -> both) and ``score`` (a judge
scores each pair). Answers come from any OpenAI-compatible server or a local transformers model.
"""

from .backends import (
    BackendUnavailableError,
    FatalBackendError,
    ItemError,
    OpenAIBackend,
    RetryableError,
    TransformersBackend,
)
from .budget import count_clip_tokens, cut_to_budget
from .config import STEPS, CaptionConfig, StepSettings, load_config
from .masks import describe_layout, layout_of, read_class_table, read_mask
from .prompts import load_prompt
from .runner import RunStoppedError, RunSummary, run_captions, run_step
from .sources import (
    Item,
    MissingInputError,
    read_image_folder,
    read_items,
    read_manifest,
    with_masks,
)

__all__ = [
    "STEPS",
    "BackendUnavailableError",
    "CaptionConfig",
    "FatalBackendError",
    "Item",
    "ItemError",
    "MissingInputError",
    "OpenAIBackend",
    "RetryableError",
    "RunStoppedError",
    "RunSummary",
    "StepSettings",
    "TransformersBackend",
    "count_clip_tokens",
    "cut_to_budget",
    "describe_layout",
    "layout_of",
    "load_config",
    "load_prompt",
    "read_class_table",
    "read_image_folder",
    "read_items",
    "read_manifest",
    "read_mask",
    "run_captions",
    "run_step",
    "with_masks",
]
