"""nwor.settling: settling time after a workload shift, on EWMA series whose answer is known in closed form."""
from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from nwor.settling import BAND, settle, settling_table, steady


def _trace(alpha, parts, step_s=0.01, batch_steps=None, gap_s=5.0, noise=0.0, seed=0):
    """Points of one arm: `parts` is [(acceptance, steps), ...]; the EWMA starts at the first acceptance.
    A new batch (segment) starts every `batch_steps` steps, after `gap_s` of wall time when other arms ran."""
    rng = random.Random(seed)
    rows, ewma, t, step = [], parts[0][0], 0.0, 0
    for part, (acceptance, steps) in enumerate(parts):
        for _ in range(steps):
            segment = step // batch_steps if batch_steps else part
            if rows and segment != rows[-1]["segment"]:
                t += gap_s
            x = min(1.0, max(0.0, acceptance + rng.gauss(0, noise)))
            rows.append({"step": step, "t_s": t, "ewma": ewma, "draft_length": 8 if ewma > 0.5 else 5,
                         "drafted": 10, "accepted": x * 10, "part": part, "segment": segment})
            ewma = (1 - alpha) * ewma + alpha * x
            t += step_s
            step += 1
    return pd.DataFrame(rows)


def _expected_steps(alpha, start, target, band=BAND):
    # after k steps the EWMA is target + (start - target)(1 - alpha)^k: settled once within band of target
    return next(k for k in range(1000) if abs((start - target) * (1 - alpha) ** k) <= band)


def test_settling_steps_match_the_closed_form():
    (row,) = settle(_trace(0.1, [(0.8, 60), (0.3, 80)]))
    assert row["level_after"] == pytest.approx(0.3) and row["level_before"] == pytest.approx(0.8)
    assert row["settling_steps"] == _expected_steps(0.1, 0.8, 0.3) == 22  # 0.5 × 0.9^22 = 0.049
    assert row["settling_s"] == pytest.approx(22 * 0.01)
    # The EWMA falls below 0.5 (length 8 -> 5) once 0.5 × 0.9^k < 0.2, at k = 9.
    assert row["first_length_change_steps"] == 9 and row["reason"] is None


def test_a_smaller_alpha_settles_later():
    fast, slow = (settle(_trace(a, [(0.8, 60), (0.3, 150)]))[0]["settling_steps"] for a in (0.2, 0.05))
    assert fast == _expected_steps(0.2, 0.8, 0.3) and slow == _expected_steps(0.05, 0.8, 0.3) > 3 * fast


def test_seconds_count_the_arms_own_time_not_the_gaps_between_its_batches():
    (row,) = settle(_trace(0.05, [(0.8, 60), (0.3, 150)], batch_steps=70))  # a 5 s gap 10 steps after the shift
    assert row["settling_steps"] == 45
    assert row["settling_s"] == pytest.approx(45 * 0.01)  # the gap counts as one median step, not 5 s


def test_a_part_too_short_for_its_alpha_has_no_level():
    (row,) = settle(_trace(0.01, [(0.8, 60), (0.3, 60)]))  # 0.5 × 0.99^60 = 0.27: far from 0.3 at the end
    assert row["settling_steps"] is None and row["settling_s"] is None
    assert "did not stay within" in row["reason"]


def test_noise_widens_the_band_instead_of_never_settling():
    (row,) = settle(_trace(0.4, [(0.8, 100), (0.3, 200)], noise=0.3))
    assert row["band"] == pytest.approx(max(BAND, 2 * row["ewma_noise_after"]))
    assert row["band"] > BAND and row["settling_steps"] is not None


def test_no_shift_no_rows_and_steady_of_nothing():
    assert settle(_trace(0.1, [(0.5, 30)])) == []
    assert steady([None, float("nan")]) == (None, None)


def test_adaptive_off_says_why():
    points = _trace(0.1, [(0.8, 20), (0.3, 20)]).assign(ewma=None)
    (row,) = settle(points)
    assert row["settling_steps"] is None and "adaptive draft length off" in row["reason"]


def test_table_has_one_row_per_shift_per_arm():
    frames = []
    for arm, alpha in (("run", 0.1), ("alpha0.2", 0.2)):
        points = _trace(alpha, [(0.8, 60), (0.3, 80), (0.8, 80)])
        frames.append(points.assign(run_id="r", instance=0, arm=arm, label=arm, ewma_alpha=alpha))
    table = settling_table(pd.concat(frames))
    assert len(table) == 4 and set(table["shift"]) == {1, 2}
    by = table.set_index(["arm", "shift"]).settling_steps
    assert by["alpha0.2", 1] < by["run", 1] and not math.isnan(by["run", 2])
    assert settling_table(pd.DataFrame()).empty


def test_bad_rule_is_refused():
    with pytest.raises(ValueError, match="band"):
        settle(_trace(0.1, [(0.8, 5), (0.3, 5)]), band=0)
