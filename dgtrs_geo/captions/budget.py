"""The 248-token budget of long captions, counted with CLIP's own BPE tokenizer.

DGTRS-CLIP reads at most :data:`~dgtrs_geo.tokens.DGTRS_CONTEXT_LENGTH` (248) tokens, SOT and EOT
included; the tokenizer silently drops the rest. A caption that does not fit teaches the model
about words it never sees, so long captions are checked before they enter a manifest, and cut at a
sentence boundary when they must be cut.
"""

from __future__ import annotations

import re

from ..tokens import DGTRS_CONTEXT_LENGTH, count_tokens

__all__ = ["count_clip_tokens", "cut_to_budget", "words_for_budget"]

# A sentence ends at . ! or ? followed by whitespace; abbreviations like "approx. 3" are rare in
# captions and cost only a slightly earlier cut.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def count_clip_tokens(text: str) -> int:
    """Return the number of CLIP tokens of ``text``: SOT + BPE tokens + EOT, before truncation."""
    return count_tokens(text)


def words_for_budget(budget: int) -> int:
    """Return a word count to ask a model for so its text likely fits ``budget`` tokens.

    English captions take about 1.3 BPE tokens per word; asking for fewer words than the budget
    strictly needs keeps most answers inside it on the first try.
    """
    return max(1, int((budget - 2) / 1.3 * 0.9))


def cut_to_budget(text: str, budget: int = DGTRS_CONTEXT_LENGTH) -> str:
    """Return the longest prefix of whole sentences of ``text`` that fits ``budget`` tokens.

    If even the first sentence is too long, it is cut at the last word that fits and closed with
    a full stop, so the result always fits.

    Args:
        text: the caption.
        budget: token budget, SOT and EOT included.

    Returns:
        ``text`` itself when it fits, otherwise its cut version.

    """
    text = text.strip()
    if count_clip_tokens(text) <= budget:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{kept} {sentence}".strip()
        if count_clip_tokens(candidate) > budget:
            break
        kept = candidate
    if kept:
        return kept
    words = text.split()
    lo, hi = 0, len(words)
    # binary search on the number of words: token counts grow monotonically with the prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_clip_tokens(" ".join(words[:mid]) + ".") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]).rstrip(",;:") + "."
