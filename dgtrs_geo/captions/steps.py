"""The four steps: what each asks the model, how its answer is checked, what it writes.

- ``long``: image + its short caption as a hint -> a detailed caption within the token budget.
- ``short``: long caption -> a one-sentence short caption.
- ``masks``: class layout computed from a label mask -> both captions.
- ``score``: (image +) both captions -> per-criterion scores from 1 to 5.

Every answer is a JSON object; anything else (prose, a cut-off object, a missing key, an empty
caption, a score out of range) raises :class:`MalformedOutput`, which the runner retries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .backends import ItemError, Message
from .budget import count_clip_tokens, cut_to_budget, words_for_budget
from .config import CaptionConfig, StepSettings
from .images import image_to_data_url
from .masks import describe_layout, layout_of, read_mask
from .prompts import Prompt
from .sources import Item

__all__ = ["SCORE_CRITERIA", "MalformedOutput", "Step", "make_step", "parse_json_answer"]

SCORE_CRITERIA = ("accuracy", "detail", "consistency", "fluency")

#: ``ask(messages, parse)`` sends messages until ``parse`` accepts an answer; the runner's.
Ask = Callable[[list[Message], Callable[[str], dict[str, Any]]], dict[str, Any]]

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class MalformedOutput(ValueError):
    """The model answered, but not in the form the step asked for."""


def parse_json_answer(text: str, keys: Sequence[str]) -> dict[str, Any]:
    """Return the JSON object in ``text`` after checking it has every key in ``keys``.

    Models often wrap JSON in a Markdown fence or a sentence; the object is taken from the first
    ``{`` to the last ``}``.

    Raises:
        MalformedOutput: if there is no JSON object or a key is missing.

    """
    text = _FENCE.sub("", text.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise MalformedOutput(f"no JSON object in the answer: {text[:120]!r}")
    try:
        answer = json.loads(text[start : end + 1])
    except json.JSONDecodeError as error:
        raise MalformedOutput(f"answer is not valid JSON ({error}): {text[:120]!r}") from None
    if not isinstance(answer, dict):
        raise MalformedOutput(f"answer is not a JSON object: {text[:120]!r}")
    missing = [key for key in keys if key not in answer]
    if missing:
        raise MalformedOutput(f"answer lacks key(s) {missing}: {text[:120]!r}")
    return answer


def _captions(*keys: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        answer = parse_json_answer(text, keys)
        for key in keys:
            value = answer[key]
            if not isinstance(value, str) or not value.strip():
                raise MalformedOutput(f"{key} must be a non-empty string, got {value!r}")
        return {key: " ".join(answer[key].split()) for key in keys}

    return parse


def _parse_scores(text: str) -> dict[str, Any]:
    answer = parse_json_answer(text, SCORE_CRITERIA)
    scores = {}
    for key in SCORE_CRITERIA:
        value = answer[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 5:
            raise MalformedOutput(f"score {key} must be a number from 1 to 5, got {value!r}")
        scores[key] = value
    return scores


def _keep_originals(item: Item, update: dict[str, Any]) -> dict[str, Any]:
    """Keep a caption the step replaces as ``<key>_original``, so no human caption is lost."""
    for key in ("caption_short", "caption_long"):
        old = item.fields.get(key)
        if key in update and old and old != update[key]:
            update[f"{key}_original"] = old
    return update


def _text(role: str, text: str) -> Message:
    return {"role": role, "content": text}


@dataclass
class Step:
    """One pipeline step bound to its prompt and settings.

    Args:
        prompt: the step's prompt.
        settings: model, sampling and image settings of the step.
        config: the run's config (token budget and overflow policy).
        classes: id -> class name, for the masks step.
        ignore: label ids the masks step leaves out.

    """

    prompt: Prompt
    settings: StepSettings
    config: CaptionConfig
    classes: Mapping[int, str] = field(default_factory=dict)
    ignore: Sequence[int] = ()

    @property
    def name(self) -> str:
        """The step's name."""
        return self.prompt.step

    def _fields(self, item: Item) -> dict[str, Any]:
        """Return the prompt fields of ``item``, or raise ItemError if the row lacks an input."""
        row = item.fields
        budget_words = words_for_budget(self.config.token_budget)
        match self.name:
            case "long":
                return {
                    "short_caption": row.get("caption_short") or "(none)",
                    "max_words": budget_words,
                }
            case "short":
                if not row.get("caption_long"):
                    raise ItemError(f"{item.id}: the short step needs a caption_long in the row")
                return {"caption_long": row["caption_long"]}
            case "masks":
                if item.mask is None:
                    raise ItemError(f"{item.id}: the masks step needs a mask for the image")
                layouts = layout_of(read_mask(item.mask), self.classes, ignore=self.ignore)
                return {"layout": describe_layout(layouts), "max_words": budget_words}
            case "score":
                if not row.get("caption_short") or not row.get("caption_long"):
                    raise ItemError(
                        f"{item.id}: the score step needs caption_short and caption_long"
                    )
                return {
                    "caption_short": row["caption_short"],
                    "caption_long": row["caption_long"],
                    "image_clause": " against the image" if self.settings.image else "",
                }
        raise ValueError(f"unknown step {self.name!r}")

    def messages(
        self, item: Item, *, image_url: Callable[[Path], str] | None = None
    ) -> list[Message]:
        """Return the chat messages of ``item``'s first request.

        Args:
            item: the item.
            image_url: turns the image path into the URL sent; a base64 data URL by default
                (the dry run passes a placeholder instead).

        """
        system, user = self.prompt.render(**self._fields(item))
        if not self.settings.image:
            return [_text("system", system), _text("user", user)]
        encode = image_url or (lambda path: image_to_data_url(path, self.config.image_max_side))
        content = [
            {"type": "image_url", "image_url": {"url": encode(item.image)}},
            {"type": "text", "text": user},
        ]
        return [_text("system", system), {"role": "user", "content": content}]

    def _fit(
        self, messages: list[Message], answer: dict[str, Any], ask: Ask
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Bring ``answer``'s caption_long within the token budget: ask again, then cut.

        Returns:
            The final answer and the budget record written to the row.

        """
        budget = self.config.token_budget
        keys = tuple(answer)
        first = tokens = count_clip_tokens(answer["caption_long"])
        asks = 0
        while (
            tokens > budget
            and self.config.overflow == "retry"
            and asks < self.config.overflow_retries
        ):
            messages = [
                *messages,
                _text("assistant", json.dumps(answer)),
                _text(
                    "user",
                    f"That caption_long has {tokens} CLIP tokens but the limit is {budget}. "
                    f"Rewrite it in at most {words_for_budget(budget) * 3 // 4} words, keeping the "
                    "main objects, counts and spatial relations. Answer with the same JSON object.",
                ),
            ]
            asks += 1
            try:
                answer = ask(messages, _captions(*keys))
            except ItemError:
                break  # no usable shorter answer: the one we have is cut below
            tokens = count_clip_tokens(answer["caption_long"])
        cut = tokens > budget
        if cut:
            answer["caption_long"] = cut_to_budget(answer["caption_long"], budget)
        record = {
            "tokens": count_clip_tokens(answer["caption_long"]),
            "first_tokens": first,
            "asked_again": asks,
            "cut": cut,
        }
        return answer, record

    def process(self, item: Item, ask: Ask) -> dict[str, Any]:
        """Run the step on ``item``; return the fields it adds or replaces in the row.

        Raises:
            ItemError: if the row lacks what the step reads.

        """
        messages = self.messages(item)
        match self.name:
            case "long":
                answer = ask(messages, _captions("caption_long"))
                answer, record = self._fit(messages, answer, ask)
                return _keep_originals(item, {**answer, "long_budget": record})
            case "short":
                return _keep_originals(item, ask(messages, _captions("caption_short")))
            case "masks":
                answer = ask(messages, _captions("caption_short", "caption_long"))
                answer, record = self._fit(messages, answer, ask)
                return _keep_originals(item, {**answer, "long_budget": record})
            case "score":
                scores = ask(messages, _parse_scores)
                overall = round(sum(scores.values()) / len(scores), 3)
                return {"scores": {**scores, "overall": overall}}
        raise ValueError(f"unknown step {self.name!r}")


def make_step(
    prompt: Prompt,
    config: CaptionConfig,
    *,
    classes: Mapping[int, str] | None = None,
    ignore: Sequence[int] = (),
) -> Step:
    """Return the step of ``prompt`` with its settings from ``config``.

    Raises:
        InputError: for the masks step without a class table (a ``ValueError`` too).

    """
    if prompt.step == "masks" and not classes:
        raise InputError(
            "the masks step needs a class table (id -> name), e.g. --classes classes.csv"
        )
    return Step(prompt, config.step(prompt.step), config, dict(classes or {}), tuple(ignore))
