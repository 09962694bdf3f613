"""Knowledge-Preserved Stretching (KPS) of CLIP's text positional embedding.

CLIP learns 77 text positions, and the first ones are trained far better than the last. KPS keeps
the first ``keep`` rows as they are and stretches the rest by ``ratio`` with linear interpolation
between neighbouring rows, so a 77-row table becomes ``ratio * 77 - (ratio - 1) * keep`` rows
(248 for the defaults). The last ``ratio - 1`` rows lie past the final learned row and are
extrapolated along its last difference. During training the kept rows stay frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..tokens import KPS_KEEP, KPS_RATIO, stretched_length

if TYPE_CHECKING:
    from open_clip import CLIP

__all__ = [
    "FrozenPrefix",
    "freeze_positional_prefix",
    "frozen_prefix_rows",
    "stretched_length",
    "stretch_positional_embedding",
]


def stretch_positional_embedding(
    pe: Tensor, keep: int = KPS_KEEP, ratio: int = KPS_RATIO
) -> Tensor:
    """Stretch a ``(L, W)`` positional table to ``ratio * L - (ratio - 1) * keep`` rows.

    Row ``k < keep`` is copied. Row ``k >= keep`` reads position ``p = keep + (k - keep) / ratio``
    of the original table, ``lo = min(floor(p), L - 2)``, ``t = p - lo`` and returns
    ``(1 - t) * pe[lo] + t * pe[lo + 1]``; for the last ``ratio - 1`` rows ``t > 1``, which
    extrapolates past ``pe[L - 1]``. ``torch.nn.functional.interpolate`` cannot express this.

    Args:
        pe: positional embedding of shape ``(L, W)``, ``L > keep >= 0``.
        keep: number of leading rows copied unchanged.
        ratio: integer stretch factor of the remaining rows.

    Returns:
        The stretched table, same dtype and device as ``pe``.

    Raises:
        ValueError: if the shape, ``keep`` or ``ratio`` cannot give a stretched table.

    """
    if pe.ndim != 2:
        raise ValueError(f"positional embedding must be 2-D (L, W), got shape {tuple(pe.shape)}")
    length = pe.shape[0]
    if not 0 <= keep <= length - 2:
        raise ValueError(f"keep={keep} must be between 0 and {length - 2} for a {length}-row table")
    if ratio < 1:
        raise ValueError(f"ratio must be a positive integer, got {ratio}")
    new_length = stretched_length(length, keep, ratio)
    k = torch.arange(keep, new_length, dtype=torch.float64, device=pe.device)
    position = keep + (k - keep) / ratio
    lo = position.floor().clamp(max=length - 2).long()
    t = (position - lo).to(torch.float64).unsqueeze(1)
    source = pe.to(torch.float64)
    stretched = (1 - t) * source[lo] + t * source[lo + 1]
    return torch.cat([pe[:keep], stretched.to(pe.dtype)], dim=0)


class FrozenPrefix(nn.Module):
    """Parametrization that pins the first rows of a table to fixed values.

    The underlying parameter keeps all rows (as the authors' ``positional_embedding_res``), but
    the effective table always takes its first ``keep`` rows from a buffer. Gradients never reach
    those rows and nothing an optimizer does to the parameter (weight decay included) can move
    them; the buffer travels with ``state_dict`` and is broadcast by DDP like any buffer.
    """

    prefix: Tensor

    def __init__(self, prefix: Tensor) -> None:
        super().__init__()
        self.register_buffer("prefix", prefix.detach().clone())

    def forward(self, table: Tensor) -> Tensor:
        """Return the table with its first rows replaced by the frozen prefix."""
        keep = self.prefix.shape[0]
        return torch.cat([self.prefix.to(table.dtype), table[keep:]], dim=0)


def freeze_positional_prefix(text_model: CLIP, keep: int = KPS_KEEP) -> None:
    """Freeze rows ``< keep`` of ``text_model.positional_embedding`` for training.

    Args:
        text_model: a module with a ``positional_embedding`` parameter (open_clip's ``CLIP``).
        keep: number of leading rows to freeze; 0 leaves the model untouched.

    """
    if keep <= 0:
        return
    if parametrize.is_parametrized(text_model, "positional_embedding"):
        parametrize.remove_parametrizations(
            text_model, "positional_embedding", leave_parametrized=True
        )
    prefix = text_model.positional_embedding[:keep]
    parametrize.register_parametrization(text_model, "positional_embedding", FrozenPrefix(prefix))


def frozen_prefix_rows(text_model: CLIP) -> int:
    """Return how many leading positional rows are frozen (0 when none)."""
    if not parametrize.is_parametrized(text_model, "positional_embedding"):
        return 0
    return sum(
        p.prefix.shape[0]
        for p in text_model.parametrizations.positional_embedding
        if isinstance(p, FrozenPrefix)
    )
