"""The adaptive controller's settling time after each workload shift, from its trace (nwor.controller_trace).

Rule (SETTLING_RULE): at a shift (the first step of a part whose workload differs from the previous part's),
the new steady level is the median EWMA over the last third of the new part (at least `min_tail` points).
The controller has settled at the first step from which its EWMA stays within ±`band` of that level until
the part ends, for at least `hold` points; otherwise it did not settle within the part (null, with a reason).
Seconds count the arm's own engine time: a gap between two of its batches (other arms ran, or none) counts
as the arm's median step time, not as wall time.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd

BAND = 0.05  # absolute EWMA; the fork's length thresholds are 0.2 apart (0.3, 0.5, 0.7)
HOLD = 5
MIN_TAIL = 3
SETTLING_RULE = {
    "level": "median EWMA over the last third of the new part (at least min_tail points)",
    "settled": "first step from which the EWMA stays within ±band of the level until the part ends, "
               "for at least `hold` points",
    "seconds": "the arm's own step time from the shift to that step; a gap between its batches counts as its "
               "median step time",
    "band": BAND, "hold": HOLD, "min_tail": MIN_TAIL,
}
COLUMNS = ["run_id", "instance", "arm", "label", "ewma_alpha", "shift", "from_part", "to_part", "shift_step",
           "level_before", "level_after", "settling_steps", "settling_s", "first_length_change_steps", "reason"]


def _level(values: list[float], min_tail: int) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    tail = values[-max(min_tail, math.ceil(len(values) / 3)):]
    return statistics.median(tail)


def settle(points: pd.DataFrame, band: float = BAND, hold: int = HOLD, min_tail: int = MIN_TAIL) -> list[dict]:
    """Settling after every shift in one arm's trace of one engine instance.

    Args:
        points: the arm's trace points, columns step, t_s, ewma, draft_length, part, segment.

    Returns:
        One dict per shift: shift (1, 2, ...), from_part, to_part, shift_step, level_before, level_after,
        settling_steps and settling_s (None when it did not settle; `reason` says why), and
        first_length_change_steps (steps until the chosen length first differs from the one before the shift).

    Raises:
        ValueError: band <= 0, hold < 1 or min_tail < 1.
    """
    if band <= 0 or hold < 1 or min_tail < 1:
        raise ValueError(f"band must be > 0 and hold, min_tail >= 1 (got {band}, {hold}, {min_tail})")
    pts = points.sort_values("step").reset_index(drop=True)
    if pts.empty or pts.ewma.isna().all():
        return []
    step, t, ewma = pts.step.tolist(), pts.t_s.tolist(), pts.ewma.tolist()
    parts, segments = pts.part.tolist(), pts.segment.tolist()
    per_step = _median_step_s(step, t, segments)
    out = []
    starts = [i for i in range(1, len(pts)) if parts[i] != parts[i - 1]]
    for n, i in enumerate(starts, 1):
        end = next((j for j in range(i + 1, len(pts)) if parts[j] != parts[i]), len(pts))
        before_start = max((j for j in [0, *starts] if j < i), default=0)
        row = {"shift": n, "from_part": parts[i - 1], "to_part": parts[i], "shift_step": step[i],
               "level_before": _level(ewma[before_start:i], min_tail), "level_after": _level(ewma[i:end], min_tail),
               "settling_steps": None, "settling_s": None, "first_length_change_steps": None, "reason": None}
        length_before = pts.draft_length[i - 1]
        change = next((j for j in range(i, end) if pts.draft_length[j] != length_before), None)
        if change is not None:
            row["first_length_change_steps"] = step[change] - step[i]
        level = row["level_after"]
        if level is None:
            row["reason"] = "no EWMA in the new part (adaptive off?)"
        else:
            settled = next((s for s in range(i, end) if all(abs(e - level) <= band for e in ewma[s:end])), None)
            if settled is None or end - settled < hold:
                row["reason"] = f"did not stay within ±{band} of {level:.3f} for {hold} points before the part ended"
            else:
                row["settling_steps"] = step[settled] - step[i]
                row["settling_s"] = _active_seconds(step, t, segments, i, settled, per_step)
        out.append(row)
    return out


def _median_step_s(step, t, segments) -> float | None:
    rates = [(t[j + 1] - t[j]) / (step[j + 1] - step[j]) for j in range(len(step) - 1)
             if segments[j + 1] == segments[j] and step[j + 1] > step[j]]
    return statistics.median(rates) if rates else None


def _active_seconds(step, t, segments, start: int, stop: int, per_step: float | None) -> float | None:
    total = 0.0
    for j in range(start, stop):
        if segments[j + 1] == segments[j]:
            total += t[j + 1] - t[j]
        elif per_step is None:
            return None
        else:
            total += per_step * (step[j + 1] - step[j])
    return total


def settling_table(frame: pd.DataFrame, **rule) -> pd.DataFrame:
    """`settle` for every (run, instance, arm) of a traces frame (nwor.controller_trace.traces_frame)."""
    rows = []
    keys = ["run_id", "instance", "arm"]
    for (run_id, instance, arm), points in frame.groupby(keys, sort=True) if not frame.empty else []:
        first = points.iloc[0]
        for row in settle(points, **rule):
            rows.append({"run_id": run_id, "instance": instance, "arm": arm, "label": first.label,
                         "ewma_alpha": first.ewma_alpha, **row})
    return pd.DataFrame(rows, columns=COLUMNS)
