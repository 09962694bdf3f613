"""Where answers come from: an OpenAI-compatible chat-completions server, or a local model.

Messages use the chat-completions form everywhere (``{"role", "content"}`` with content parts
``{"type": "text"}`` and ``{"type": "image_url"}`` holding base64 data URLs), so a step builds
one request and any backend can answer it. Backends sort failures into three kinds the runner
acts on: worth retrying, hopeless for this item, and hopeless for the whole run.
"""

from __future__ import annotations

import email.utils
import threading
import time
from typing import Any, Protocol

import requests

from ..errors import InputError
from .config import CaptionConfig

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "FatalBackendError",
    "ItemError",
    "OpenAIBackend",
    "RetryableError",
    "TransformersBackend",
    "make_backend",
]

Message = dict[str, Any]


class RetryableError(Exception):
    """A failure that may pass on another try (429, 5xx, timeouts, lost connections, bad bodies).

    Args:
        message: what went wrong.
        retry_after: seconds the server asked us to wait, if it said.

    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ItemError(Exception):
    """A failure of this item that another try will not fix (e.g. HTTP 400 for its image)."""


class FatalBackendError(Exception):
    """A failure no item can get past (bad URL, refused key, unknown model): the run stops."""


class BackendUnavailableError(InputError, ImportError):
    """The chosen backend cannot run here: a package it needs is missing, or its model is."""


class Backend(Protocol):
    """Anything that turns chat messages into the assistant's answer text."""

    name: str

    def complete(
        self, messages: list[Message], *, model: str, temperature: float, max_tokens: int
    ) -> str:
        """Return the assistant's answer to ``messages``."""
        ...


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    """A client of any OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (vLLM) or
            ``http://localhost:11434/v1`` (Ollama).
        api_key: bearer token, or None for servers that need none.
        timeout: seconds to wait for the connection and for the answer.
        key_hint: name of the variable the key comes from, for error messages.
        json_mode: send ``response_format: {"type": "json_object"}`` with every request.

    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        key_hint: str = "OPENAI_API_KEY",
        json_mode: bool = False,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._key_hint = key_hint
        self.json_mode = json_mode
        # one pooled session per worker thread: requests.Session is not documented thread-safe
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def complete(
        self, messages: list[Message], *, model: str, temperature: float, max_tokens: int
    ) -> str:
        """Send one chat-completions request and return the answer text.

        Raises:
            RetryableError: on timeouts, connection errors, 408/409/429/5xx and bodies that are
                not a chat-completions answer.
            ItemError: on other 4xx answers.
            FatalBackendError: on 401/403 (key) and 404 (URL or model name).

        """
        payload = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        try:
            response = self._session().post(
                self.url, json=payload, headers=self._headers, timeout=self.timeout
            )
        except requests.Timeout as error:
            raise RetryableError(f"no answer from {self.url} within {self.timeout} s") from error
        except requests.ConnectionError as error:
            raise RetryableError(f"cannot reach {self.url}: {error}") from error
        status = response.status_code
        if status in (408, 409, 429) or status >= 500:
            raise RetryableError(
                f"HTTP {status} from {self.url}: {response.text[:200]}", _retry_after(response)
            )
        if status in (401, 403):
            raise FatalBackendError(
                f"HTTP {status} from {self.url}: the server refused the request; put a valid API "
                f"key in the environment variable {self._key_hint} (or change api_key_env)"
            )
        if status == 404:
            raise FatalBackendError(
                f"HTTP 404 from {self.url}: check base_url (it usually ends in /v1) and that the "
                f"server serves the model {model!r}: {response.text[:200]}"
            )
        if status >= 400:
            raise ItemError(f"HTTP {status} from {self.url}: {response.text[:300]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise RetryableError(
                f"malformed chat-completions body from {self.url}: {response.text[:200]!r}"
            ) from error
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise RetryableError(f"answer from {self.url} has no text content: {content!r}")
        return content


class TransformersBackend:
    """A Hugging Face transformers model run in this process, for users with a local GPU.

    Vision-language models (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``) load with
    ``AutoModelForImageTextToText`` and their processor; text models (``Qwen/Qwen2.5-7B-Instruct``)
    with ``AutoModelForCausalLM`` and their tokenizer. Generation is serialised: one model, one GPU.

    Args:
        model: Hugging Face repo id or local folder.
        device: ``"auto"`` (spread over the GPUs with accelerate) or a torch device
            (``"cuda"``, ``"cuda:1"``, ``"cpu"``).

    """

    name = "transformers"

    def __init__(self, model: str, device: str = "auto") -> None:
        try:
            import transformers
        except ImportError as error:
            raise BackendUnavailableError(
                "the 'transformers' caption backend needs the transformers package: "
                "pip install 'transformers>=4.49' accelerate   (or use backend: openai with a "
                "vLLM or Ollama server)"
            ) from error
        self.model_name = model
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(model)
        except OSError as error:  # transformers' way of saying "no such repo or folder"
            raise BackendUnavailableError(
                f"cannot load the caption model {model!r}: {error}. Give a Hugging Face repo id "
                "or a local model folder"
            ) from error
        # "auto" spreads the model over the GPUs (needs accelerate); a named device needs not
        placement = {"device_map": "auto"} if device == "auto" else {}
        try:
            # Any: transformers' annotations of ``PreTrainedModel.to`` reject a device string.
            self._model: Any = transformers.AutoModelForImageTextToText.from_pretrained(
                model, dtype="auto", **placement
            )
            self._vision = True
        except ValueError:  # not a vision-language architecture
            self._model = transformers.AutoModelForCausalLM.from_pretrained(
                model, dtype="auto", **placement
            )
            self._vision = False
        if device != "auto":
            self._model.to(device)
        self._model.eval()
        self._lock = threading.Lock()

    def _convert(self, message: Message) -> dict[str, Any]:
        from .images import data_url_to_image

        content = message["content"]
        if isinstance(content, str):
            return {"role": message["role"], "content": content}
        if not self._vision:
            # text chat templates expect a plain string; images cannot reach a text model
            if any(part["type"] == "image_url" for part in content):
                raise ItemError(
                    f"{self.model_name} is a text model; set image: false for this step"
                )
            return {"role": message["role"], "content": "".join(p["text"] for p in content)}
        parts = [
            {"type": "image", "image": data_url_to_image(p["image_url"]["url"])}
            if p["type"] == "image_url"
            else {"type": "text", "text": p["text"]}
            for p in content
        ]
        return {"role": message["role"], "content": parts}

    def complete(
        self, messages: list[Message], *, model: str, temperature: float, max_tokens: int
    ) -> str:
        """Generate the answer to ``messages`` with the loaded model (``model`` is ignored)."""
        import torch

        inputs = self._processor.apply_chat_template(
            [self._convert(m) for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self._model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        with self._lock, torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=max_tokens, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def make_backend(config: CaptionConfig, step: str) -> Backend:
    """Return the backend ``config`` asks for, ready to answer ``step``."""
    match config.backend:
        case "openai":
            return OpenAIBackend(
                config.step(step).base_url or config.base_url,
                api_key=config.api_key(),
                timeout=config.timeout,
                key_hint=config.api_key_env,
                json_mode=config.json_mode,
            )
        case "transformers":
            return TransformersBackend(config.step(step).model, device=config.device)
    raise InputError(f"unknown caption backend {config.backend!r}")
