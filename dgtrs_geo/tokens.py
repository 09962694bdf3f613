"""Text context lengths, KPS defaults and the CLIP tokenizer: the one place they are declared.

Every model this project serves reads text through CLIP's byte-pair encoding (lower-cased,
``[SOT] + BPE + [EOT]``, zero-padded; an over-long text is cut and its last kept token set to EOT).
OpenAI's CLIP learned :data:`CLIP_CONTEXT_LENGTH` (77) positions; Knowledge-Preserved Stretching
with :data:`KPS_KEEP` (20) and :data:`KPS_RATIO` (4) turns them into
:data:`DGTRS_CONTEXT_LENGTH` (248), the context of DGTRS-CLIP and Long-CLIP
(docs/protocols.md, section "KPS").

The constants import nothing, so light callers (the worker's reading loop, the QGIS side) can use
them without loading torch; the tokenizer functions import open_clip (and torch) on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "DGTRS_CONTEXT_LENGTH",
    "KPS_KEEP",
    "KPS_RATIO",
    "ClipTokenizer",
    "clip_tokenizer",
    "count_tokens",
    "stretched_length",
]

#: Text positions of OpenAI's CLIP and of models fine-tuned from it without KPS.
CLIP_CONTEXT_LENGTH = 77
#: Text positions of DGTRS-CLIP and Long-CLIP: ``stretched_length(77, 20, 4)``.
DGTRS_CONTEXT_LENGTH = 248
#: Leading positional rows KPS copies unchanged (and training keeps frozen).
KPS_KEEP = 20
#: Factor by which KPS stretches the remaining positional rows.
KPS_RATIO = 4


class ClipTokenizer(Protocol):
    """The part of open_clip's ``SimpleTokenizer`` the project uses."""

    context_length: int | None

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> Tensor:
        """Return ``[N, context_length]`` token ids, padded and cut."""
        ...

    def encode(self, text: str) -> list[int]:
        """Return the BPE ids of ``text`` without start and end tokens, never cut."""
        ...


def stretched_length(
    length: int = CLIP_CONTEXT_LENGTH, keep: int = KPS_KEEP, ratio: int = KPS_RATIO
) -> int:
    """Return the number of positional rows KPS makes from a ``length``-row table.

    Args:
        length: rows of the original table.
        keep: leading rows copied unchanged.
        ratio: stretch factor of the other rows.

    Returns:
        ``ratio * length - (ratio - 1) * keep`` (248 for the defaults).

    """
    return ratio * length - (ratio - 1) * keep


@functools.lru_cache(maxsize=8)
def clip_tokenizer(context_length: int = DGTRS_CONTEXT_LENGTH) -> ClipTokenizer:
    """Return CLIP's BPE tokenizer padding and cutting to ``context_length`` tokens.

    The same tokenizer as ``open_clip.get_tokenizer("ViT-B-16", context_length=...)``, built once
    per context length (reading the BPE vocabulary takes a noticeable fraction of a second).

    Args:
        context_length: tokens per text, start and end tokens included.

    Returns:
        A callable ``texts -> LongTensor [N, context_length]`` with an ``encode(text)`` method.

    """
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer: ClipTokenizer = SimpleTokenizer(context_length=context_length)
    return tokenizer


def count_tokens(text: str) -> int:
    """Return the tokens ``text`` takes in a CLIP context: start + BPE + end, before any cut.

    Args:
        text: any text.

    Returns:
        The count to compare with a context length (a text fits when it is at most that).

    """
    return len(clip_tokenizer().encode(text)) + 2
