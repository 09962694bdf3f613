import math

import pytest

from dgtrs_geo.curriculum import DGCLSchedule, dgcl_weights


def test_default_is_cosine_short_to_long_with_short_floor() -> None:
    schedule = DGCLSchedule()
    assert schedule(0.0) == pytest.approx((0.5, 1.0))
    assert schedule(0.5) == pytest.approx((0.75, 0.75))
    assert schedule(1.0) == pytest.approx((1.0, 0.5))
    # (1 - cos(pi / 4)) / 2 = 0.1464...
    ramp = (1 - math.cos(math.pi / 4)) / 2
    assert schedule(0.25) == pytest.approx((0.5 + 0.5 * ramp, 1.0 - 0.5 * ramp))
    assert min(schedule(t / 100)[1] for t in range(101)) == pytest.approx(0.5)


def test_linear_hand_values() -> None:
    schedule = DGCLSchedule("linear", long_start=0.0, long_end=2.0, short_start=1.0, short_end=0.2)
    assert schedule(0.25) == pytest.approx((0.5, 0.8))
    assert schedule(0.75) == pytest.approx((1.5, 0.4))
    assert schedule(-1.0) == pytest.approx((0.0, 1.0))  # progress is clamped
    assert schedule(3.0) == pytest.approx((2.0, 0.2))


def test_constant_is_long_clip() -> None:
    schedule = DGCLSchedule("constant", long_start=1.0, short_start=1.0)
    assert {schedule(t) for t in (0.0, 0.3, 1.0)} == {(1.0, 1.0)}


def test_staged_hand_values() -> None:
    schedule = DGCLSchedule("staged", stages=[[0.0, 0.2, 1.0], [0.4, 1.0, 1.0], [0.8, 1.0, 0.3]])
    assert schedule(0.0) == (0.2, 1.0)
    assert schedule(0.39) == (0.2, 1.0)
    assert schedule(0.4) == (1.0, 1.0)
    assert schedule(0.9) == (1.0, 0.3)


def test_per_step_progress() -> None:
    schedule = DGCLSchedule("linear", long_start=0.0, long_end=1.0, short_start=1.0, short_end=0.5)
    assert dgcl_weights(0, 5, schedule) == pytest.approx((0.0, 1.0))
    assert dgcl_weights(1, 5, schedule) == pytest.approx((0.25, 0.875))
    assert dgcl_weights(4, 5, schedule) == pytest.approx((1.0, 0.5))
    assert dgcl_weights(0, 1, schedule) == pytest.approx((1.0, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "exponential"}, "unknown DGCL schedule"),
        ({"name": "linear", "short_end": 0.0}, "short-caption weight reaches 0"),
        ({"name": "cosine", "long_start": -1.0}, "non-negative"),
        ({"name": "staged"}, "needs stages"),
        ({"name": "staged", "stages": [[0.1, 1.0, 1.0]]}, "begin at 0"),
        ({"name": "staged", "stages": [[0.0, 1.0, 1.0], [0.0, 1.0, 0.5]]}, "increase"),
        (
            {"name": "constant", "long_start": 0.0, "short_start": 0.0, "allow_zero_short": True},
            "all zero",
        ),
    ],
)
def test_bad_schedules_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DGCLSchedule(**kwargs)


def test_zero_short_allowed_for_ablation() -> None:
    schedule = DGCLSchedule("constant", long_start=1.0, short_start=0.0, allow_zero_short=True)
    assert schedule(0.5) == (1.0, 0.0)
