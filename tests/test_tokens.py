"""The shared text facts: context lengths, KPS defaults and CLIP's tokenizer."""

import subprocess
import sys

import open_clip
import pytest

from dgtrs_geo import tokens

TEXTS = ["a red roof", "", "Two TENNIS courts, next to a pool!"]


def test_kps_turns_clip_context_into_dgtrs_context() -> None:
    # Long-CLIP / DGTRS-CLIP: 20 rows kept, the other 57 stretched 4x -> 20 + 4 * 57 = 248.
    assert tokens.KPS_KEEP + tokens.KPS_RATIO * (77 - tokens.KPS_KEEP) == 248
    assert tokens.stretched_length() == tokens.DGTRS_CONTEXT_LENGTH == 248
    assert tokens.CLIP_CONTEXT_LENGTH == 77
    assert tokens.stretched_length(10, keep=2, ratio=3) == 2 + 3 * 8


@pytest.mark.parametrize("context", [77, 248])
def test_tokenizer_is_open_clips(context: int) -> None:
    long_text = " ".join(["building"] * 300)
    ours = tokens.clip_tokenizer(context)(TEXTS + [long_text])
    theirs = open_clip.get_tokenizer("ViT-B-16", context_length=context)(TEXTS + [long_text])
    assert ours.shape == (4, context) and (ours == theirs).all()
    assert tokens.clip_tokenizer(context) is tokens.clip_tokenizer(context)


def test_count_tokens_counts_start_bpe_and_end() -> None:
    tokenizer = tokens.clip_tokenizer(248)
    for text in TEXTS:
        # Without a cut, the end-of-text token (the largest id) is the last counted token.
        assert tokens.count_tokens(text) == int(tokenizer([text])[0].argmax()) + 1
    assert tokens.count_tokens("") == 2
    assert tokens.count_tokens(" ".join(["building"] * 300)) == 302


def test_constants_import_without_torch() -> None:
    code = (
        "import sys; from dgtrs_geo.tokens import DGTRS_CONTEXT_LENGTH; "
        "import dgtrs_geo.protocols; "
        "print(DGTRS_CONTEXT_LENGTH, 'torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["248", "False", "False"]
