"""DGCL: Dual-Granularity Curriculum Learning schedules of ``(w_long, w_short)``.

The paper says only that its curriculum "balances long- and short-text supervision during
training"; the schedule itself is unpublished. This project's interpretation is a per-step
weighting ``L = w_long(t) * L_long + w_short(t) * L_short`` over training progress ``t`` in
``[0, 1]``, easy to hard: short captions (closest to CLIP's pre-training) lead, long captions
take over. The short weight keeps a floor above zero, because dropping short text degrades
short-text retrieval after KPS (Long-CLIP's maintainers). The default (``cosine`` from
``(0.5, 1.0)`` to ``(1.0, 0.5)``) is justified by the ablation in ``docs/training.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DGCLSchedule", "ScheduleName", "dgcl_weights"]

ScheduleName = Literal["constant", "linear", "cosine", "staged"]


@dataclass(frozen=True)
class DGCLSchedule:
    """A DGCL weighting schedule over training progress.

    ``constant`` keeps the start weights (Long-CLIP: 1:1). ``linear`` and ``cosine`` move from the
    start to the end weights with ramp ``r(t) = t`` or ``(1 - cos(pi t)) / 2``. ``staged`` holds
    piecewise-constant weights: ``stages`` lists ``(t_begin, w_long, w_short)`` with the first
    ``t_begin`` equal to 0.

    Attributes:
        name: schedule kind.
        long_start: ``w_long`` at ``t = 0``.
        long_end: ``w_long`` at ``t = 1``.
        short_start: ``w_short`` at ``t = 0``.
        short_end: ``w_short`` at ``t = 1``.
        stages: stage table of the ``staged`` schedule.
        allow_zero_short: permit a schedule whose short weight reaches zero (ablations only).

    """

    name: ScheduleName = "cosine"
    long_start: float = 0.5
    long_end: float = 1.0
    short_start: float = 1.0
    short_end: float = 0.5
    stages: Sequence[Sequence[float]] = field(default_factory=tuple)
    allow_zero_short: bool = False

    def __post_init__(self) -> None:
        """Validate the schedule so a wrong recipe fails before training starts."""
        match self.name:
            case "constant":
                longs, shorts = [self.long_start], [self.short_start]
            case "linear" | "cosine":
                longs = [self.long_start, self.long_end]
                shorts = [self.short_start, self.short_end]
            case "staged":
                if not self.stages or any(len(stage) != 3 for stage in self.stages):
                    raise ValueError(
                        "the 'staged' DGCL schedule needs stages=[[t_begin, w_long, w_short], "
                        f"...], got {self.stages}"
                    )
                begins = [stage[0] for stage in self.stages]
                if begins[0] != 0 or any(b <= a for a, b in zip(begins, begins[1:], strict=False)):
                    raise ValueError(
                        f"DGCL stage starts must begin at 0 and increase strictly, got {begins}"
                    )
                longs = [stage[1] for stage in self.stages]
                shorts = [stage[2] for stage in self.stages]
            case _:
                raise ValueError(
                    f"unknown DGCL schedule {self.name!r}: use constant, linear, cosine or staged"
                )
        weights = longs + shorts
        if any(w < 0 for w in weights):
            raise ValueError(f"DGCL weights must be non-negative, got {weights}")
        if not self.allow_zero_short and min(shorts) <= 0:
            raise ValueError(
                "the DGCL short-caption weight reaches 0, which degrades short-text retrieval; "
                "set allow_zero_short=True to run such an ablation on purpose"
            )
        if max(longs) + max(shorts) <= 0:
            raise ValueError("DGCL weights are all zero: nothing would be trained")

    def __call__(self, progress: float) -> tuple[float, float]:
        """Return ``(w_long, w_short)`` at training progress ``progress``.

        Args:
            progress: fraction of training done, clamped to ``[0, 1]``.

        Returns:
            The long and short loss weights.

        """
        t = min(max(progress, 0.0), 1.0)
        match self.name:
            case "constant":
                return self.long_start, self.short_start
            case "staged":
                current = self.stages[0]
                for stage in self.stages:
                    if t >= stage[0]:
                        current = stage
                return float(current[1]), float(current[2])
            case "linear":
                ramp = t
            case _:
                ramp = (1 - math.cos(math.pi * t)) / 2
        return (
            self.long_start + ramp * (self.long_end - self.long_start),
            self.short_start + ramp * (self.short_end - self.short_start),
        )


def dgcl_weights(step: int, total_steps: int, schedule: DGCLSchedule) -> tuple[float, float]:
    """Return the DGCL weights at optimizer step ``step`` of ``total_steps``.

    Args:
        step: optimizer steps done so far (0-based).
        total_steps: optimizer steps of the whole run; progress is ``step / (total_steps - 1)``,
            so the first step gets the start weights and the last step the end weights.
        schedule: the schedule to evaluate.

    Returns:
        The long and short loss weights.

    """
    progress = step / (total_steps - 1) if total_steps > 1 else 1.0
    return schedule(progress)
