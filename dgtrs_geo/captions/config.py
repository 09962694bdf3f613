"""Settings of a caption run: which server or local model answers each step, and how hard to try.

A run reads one YAML (or JSON) file. Nothing secret lives in it: the API key is read from the
environment variable the file names, so a config can be committed and shared.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..tokens import DGTRS_CONTEXT_LENGTH
from .sources import MissingInputError

__all__ = ["STEPS", "CaptionConfig", "StepSettings", "load_config"]

#: The four steps of the pipeline, in the order a DGTRSD build usually runs them.
STEPS = ("long", "short", "masks", "score")


@dataclass
class StepSettings:
    """How one step talks to its model.

    Args:
        model: model name as the server knows it (or a Hugging Face repo id for ``transformers``).
        temperature: sampling temperature; 0 asks for greedy decoding.
        max_tokens: most tokens the model may generate per answer.
        image: whether the image is sent with the prompt (needs a vision-language model).
        prompt_version: which prompt file of the step to use (``prompts/<step>-<version>.txt``).
        base_url: this step's server, when it differs from the run's ``base_url`` (vLLM serves
            one model per server, so the vision and the text model often sit on two ports).

    """

    model: str
    temperature: float = 0.2
    max_tokens: int = 512
    image: bool = True
    prompt_version: str = "v1"
    base_url: str | None = None


def _default_steps() -> dict[str, StepSettings]:
    # The paper's split: a vision-language model writes long captions and judges pairs,
    # a text model compresses long captions and turns mask layouts into captions.
    vl, text = "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"
    return {
        "long": StepSettings(model=vl, image=True),
        "short": StepSettings(model=text, image=False, max_tokens=128),
        "masks": StepSettings(model=text, image=False),
        "score": StepSettings(model=vl, image=True, temperature=0.0, max_tokens=256),
    }


@dataclass
class CaptionConfig:
    """Everything a caption run needs besides its input and output paths.

    Args:
        backend: ``"openai"`` for any OpenAI-compatible chat-completions server (vLLM, SGLang,
            Ollama, LM Studio, hosted APIs) or ``"transformers"`` for a local in-process model.
        base_url: the server's API root, e.g. ``http://localhost:8000/v1``.
        api_key_env: name of the environment variable holding the API key; unset or empty
            variable means no ``Authorization`` header (local servers need none).
        timeout: seconds to wait for one answer before the request counts as failed.
        concurrency: requests in flight at once.
        max_attempts: tries per item (transport faults and malformed answers share the count).
        backoff_base: first retry delay in seconds; doubles with each retry, with jitter.
        backoff_max: longest retry delay in seconds.
        token_budget: CLIP text context a long caption must fit, SOT and EOT included.
        overflow: what to do with a long caption over the budget: ``"retry"`` asks the model
            to shorten it (``overflow_retries`` times, then cuts), ``"cut"`` cuts at once at the
            last sentence boundary that fits.
        overflow_retries: how often a too-long caption is sent back before it is cut.
        image_max_side: images are shrunk so their longer side is at most this many pixels.
        json_mode: ask the server for a JSON object (``response_format: json_object``), which
            vLLM, Ollama and OpenAI enforce while decoding; off by default because not every
            server accepts the field.
        device: device for the ``transformers`` backend (``"auto"``, ``"cuda"``, ``"cpu"``).
        steps: per-step settings, keyed by step name.

    """

    backend: str = "openai"
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    concurrency: int = 8
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    token_budget: int = DGTRS_CONTEXT_LENGTH
    overflow: str = "retry"
    overflow_retries: int = 2
    image_max_side: int = 1024
    json_mode: bool = False
    device: str = "auto"
    steps: dict[str, StepSettings] = field(default_factory=_default_steps)

    def __post_init__(self) -> None:
        if self.backend not in ("openai", "transformers"):
            raise InputError(f"backend must be 'openai' or 'transformers', got {self.backend!r}")
        if self.overflow not in ("retry", "cut"):
            raise InputError(f"overflow must be 'retry' or 'cut', got {self.overflow!r}")
        for name in ("concurrency", "max_attempts", "token_budget", "image_max_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.timeout, int | float) or not self.timeout > 0:
            raise InputError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        unknown = set(self.steps) - set(STEPS)
        if unknown:
            raise InputError(f"unknown step(s) {sorted(unknown)} in config; steps are {STEPS}")

    def api_key(self) -> str | None:
        """Return the API key from the environment, or None when the variable is unset or empty."""
        return os.environ.get(self.api_key_env) or None

    def step(self, name: str) -> StepSettings:
        """Return the settings of step ``name``."""
        if name not in STEPS:
            raise InputError(f"unknown step {name!r}; steps are {STEPS}")
        return self.steps[name]


def _check_keys(given: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(given) - known
    if unknown:
        raise InputError(
            f"unknown key(s) {sorted(unknown)} in {where}; known keys are {sorted(known)}"
        )


def load_config(path: str | Path | None = None, **overrides: Any) -> CaptionConfig:
    """Read a caption config from YAML or JSON, then apply keyword overrides.

    Step sections merge into the defaults, so a file may set only what differs, e.g.
    ``steps: {long: {model: qwen2.5vl:7b}}``.

    Args:
        path: the config file; None starts from the defaults.
        **overrides: top-level settings that win over the file (None values are ignored),
            as the command line passes them.

    Returns:
        The validated config.

    Raises:
        MissingInputError: if ``path`` does not exist (a ``FileNotFoundError`` too).
        InputError: if the file is not YAML or JSON, on unknown keys or invalid values.

    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"caption config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise InputError(f"caption config {path} is not YAML or JSON: {error}") from error
        if not isinstance(data, dict):
            raise InputError(f"caption config {path} must be a mapping of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    _check_keys(data, CaptionConfig, "caption config")
    steps = _default_steps()
    for name, section in (data.pop("steps", None) or {}).items():
        if name not in STEPS:
            raise InputError(f"unknown step {name!r} in caption config; steps are {STEPS}")
        if not isinstance(section, dict):
            raise InputError(f"steps.{name} in caption config must be a mapping of settings")
        _check_keys(section, StepSettings, f"steps.{name}")
        steps[name] = dataclasses.replace(steps[name], **section)
    return CaptionConfig(**data, steps=steps)
