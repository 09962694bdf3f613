"""Tests written from the mutation run on ``dgtrs_geo/models/kps.py``.

Each pins a behaviour a surviving mutant changed; benchmarks/results/mutation-triage.md lists the
mutants each kills and the equivalent ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dgtrs_geo.models.kps import (
    freeze_positional_prefix,
    frozen_prefix_rows,
    stretch_positional_embedding,
)


class _TextModel(nn.Module):
    """Anything with a ``positional_embedding`` parameter, as the functions document."""

    def __init__(self, rows: int = 6, width: int = 3) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.arange(rows * width, dtype=torch.float32).reshape(rows, width)
        )


def test_stretch_refuses_a_keep_beyond_the_table_naming_the_bound() -> None:
    with pytest.raises(ValueError, match=r"^keep=19 must be between 0 and 18 for a 20-row table$"):
        stretch_positional_embedding(torch.zeros(20, 4), keep=19, ratio=4)


def test_stretch_by_one_is_the_identity() -> None:
    pe = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        stretch_positional_embedding(pe, keep=3, ratio=1), pe, rtol=0, atol=0
    )


def test_keep_zero_leaves_the_model_untouched() -> None:
    model = _TextModel()
    freeze_positional_prefix(model, keep=0)
    assert not parametrize.is_parametrized(model) and frozen_prefix_rows(model) == 0
    assert list(model.state_dict()) == ["positional_embedding"]


def test_keep_one_freezes_exactly_the_first_row() -> None:
    model = _TextModel()
    freeze_positional_prefix(model, keep=1)
    assert frozen_prefix_rows(model) == 1
    model.positional_embedding.sum().backward()
    grad = model.parametrizations.positional_embedding.original.grad
    assert grad[0].abs().sum() == 0 and bool((grad[1:] == 1).all())


def test_freezing_again_keeps_the_frozen_values_not_the_drifted_parameter() -> None:
    model = _TextModel()
    freeze_positional_prefix(model, keep=2)
    frozen = model.positional_embedding[:2].detach().clone()
    # Weight decay (or any optimizer step) moves the underlying parameter's prefix rows; the
    # effective table does not move, and freezing again must keep what the model answered with.
    with torch.no_grad():
        model.parametrizations.positional_embedding.original[:2] -= 100.0
    torch.testing.assert_close(model.positional_embedding[:2], frozen)
    freeze_positional_prefix(model, keep=2)
    torch.testing.assert_close(model.positional_embedding[:2], frozen)
    assert frozen_prefix_rows(model) == 2


def test_frozen_rows_take_the_table_dtype_when_the_buffer_differs() -> None:
    # Mixed precision that casts parameters but keeps buffers in float32 (FSDP's buffer_dtype).
    model = _TextModel()
    freeze_positional_prefix(model, keep=2)
    original = model.parametrizations.positional_embedding.original
    original.data = original.data.to(torch.bfloat16)
    table = model.positional_embedding
    assert table.dtype == torch.bfloat16 and table.shape == (6, 3)
    assert model.parametrizations.positional_embedding[0].prefix.dtype == torch.float32


def test_stretch_interpolates_in_float64_then_rounds_once() -> None:
    # A float32 table is interpolated in float64 and rounded to float32 once, so each row is the
    # correctly rounded value of the formula (float32 arithmetic would be off by an ulp at times).
    pe = torch.randn(77, 16, generator=torch.Generator().manual_seed(1))
    keep, ratio = 20, 4
    exact = pe.double()
    rows = [exact[k] for k in range(keep)]
    for k in range(keep, 4 * 77 - 3 * keep):
        p = keep + (k - keep) / ratio
        lo = min(int(p), 77 - 2)
        t = p - lo
        rows.append((1 - t) * exact[lo] + t * exact[lo + 1])
    expected = torch.stack(rows).float()
    got = stretch_positional_embedding(pe, keep, ratio)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
