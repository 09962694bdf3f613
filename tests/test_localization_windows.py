import numpy as np
import pytest

from dgtrs_geo.localization.windows import plan_windows, scales_to_pixels


def _as_set(plan) -> set[tuple[int, int, int, int]]:
    return {tuple(int(v) for v in w) for w in plan.windows}


def test_plan_hand_computed_clamp_and_dedup() -> None:
    # Width 10, height 6, s = 4. Columns: grid 0 starts 0, 4, 8 -> 8 clamps to 6; grid 1 starts
    # 2, 6. Rows: grid 0 starts 0, 4 -> 4 clamps to 2; grid 1 starts 2. Grid 1's (6, 2) is also
    # grid 0's, so 6 + 2 - 1 = 7 windows.
    plan = plan_windows(10, 6, scales=(4,))
    expected = {
        (0, 0, 4, 4), (4, 0, 4, 4), (6, 0, 4, 4),
        (0, 2, 4, 4), (4, 2, 4, 4), (6, 2, 4, 4),
        (2, 2, 4, 4),
    }  # fmt: skip
    assert _as_set(plan) == expected
    assert len(plan) == 7


def test_plan_two_scales_sorted_by_size_and_inside() -> None:
    plan = plan_windows(16, 16, scales=(8, 4))
    sizes = plan.windows[:, 2]
    assert (np.diff(sizes) >= 0).all()
    # s = 4: grid 0 has starts 0, 4, 8, 12 (4 x 4 windows); grid 1 starts 2, 6, 10, 14 -> 14
    # clamps to 12, so grid 1's (12, 12) repeats grid 0's.
    assert (sizes == 4).sum() == 16 + 16 - 1
    # s = 8: grid 0 starts 0, 8 (2 x 2); grid 1 starts 4, 12 -> 12 clamps to 8: (8, 8) repeats.
    assert (sizes == 8).sum() == 4 + 4 - 1
    assert (plan.windows[:, 0] + plan.windows[:, 2] <= 16).all()
    assert (plan.windows[:, 1] + plan.windows[:, 3] <= 16).all()


def test_plan_raster_smaller_than_window() -> None:
    plan = plan_windows(30, 20, scales=(256, 512))
    assert _as_set(plan) == {(0, 0, 30, 20)}


def test_plan_region_stays_inside_aoi() -> None:
    plan = plan_windows(100, 100, scales=(8,), region=(40, 50, 20, 12))
    w = plan.windows
    assert w[:, 0].min() == 40 and (w[:, 0] + w[:, 2]).max() == 60
    assert w[:, 1].min() == 50 and (w[:, 1] + w[:, 3]).max() == 62
    # Columns: 40, 48, 56 -> 52 and 44, 52 -> {40, 44, 48, 52}; rows: 50, 58 -> 54 and 54.
    assert _as_set(plan) == {(c, r, 8, 8) for c in (40, 48, 52) for r in (50, 54)} | {
        (44, 54, 8, 8),
        (52, 54, 8, 8),
    }


def test_plan_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_windows(0, 10)
    with pytest.raises(ValueError, match="scales"):
        plan_windows(10, 10, scales=(0,))
    with pytest.raises(ValueError, match="does not fit"):
        plan_windows(10, 10, scales=(4,), region=(5, 5, 10, 2))


def test_scales_in_metres() -> None:
    assert scales_to_pixels([100, 300], gsd_m=0.3) == (333, 1000)
    assert scales_to_pixels([2560], gsd_m=10) == (256,)
    with pytest.raises(ValueError, match="ground sample distance"):
        scales_to_pixels([100], gsd_m=0)
