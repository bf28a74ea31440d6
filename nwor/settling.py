"""The adaptive controller's settling time after each workload shift, from its trace (nwor.controller_trace).

Rule (SETTLING_RULE): a shift is the first step of a workload part that differs from the previous one. The
new level is what the EWMA converges to in that part, the mean of its inputs: the per-step acceptance
(accepted / drafted) averaged over the part's steps (the median EWMA of the part's last third where the trace
has no acceptance). The band is ±max(`band`, 2 × the EWMA's steady noise), the noise being 1.4826 × the
median absolute deviation of the part's last third (a higher alpha tracks faster but fluctuates more; an
absolute band alone would call it never settled). The controller has settled at the first step from which
its EWMA stays inside the band until the part ends, for at least `hold` points; otherwise it did not settle
within the part (null, with a reason). Seconds count the arm's own engine time: a gap between two of its
batches (other arms ran) counts as the arm's median step time, not as wall time.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd

BAND = 0.05  # minimum half-width, absolute EWMA; the fork's length thresholds are 0.2 apart (0.3, 0.5, 0.7)
HOLD = 5
MIN_TAIL = 3
SETTLING_RULE = {
    "shift": "first step of a workload part that differs from the previous part",
    "level": "mean per-step acceptance (accepted / drafted, steps that drafted) over the new part, the EWMA's "
             "fixed point; the median EWMA of the part's last third where the trace has no acceptance",
    "band": "±max(band, 2 × 1.4826 × median absolute deviation of the EWMA over the part's last third)",
    "settled": "first step from which the EWMA stays inside the band until the part ends, for at least `hold` points",
    "seconds": "the arm's own step time from the shift to that step; a gap between its batches counts as its "
               "median step time",
    "min_band": BAND, "hold": HOLD, "min_tail": MIN_TAIL,
}
COLUMNS = ["run_id", "instance", "arm", "label", "ewma_alpha", "shift", "from_part", "to_part", "shift_step",
           "level_before", "level_after", "band", "ewma_noise_after", "settling_steps", "settling_s",
           "first_length_change_steps", "length_switches_per_100_steps", "reason"]


def _tail(values: list, min_tail: int) -> list[float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return values[-max(min_tail, math.ceil(len(values) / 3)):] if values else []


def steady(values: list, min_tail: int = MIN_TAIL) -> tuple[float | None, float | None]:
    """(median, noise) of a part's EWMA over its last third: the median and 1.4826 × the tail's MAD."""
    tail = _tail(values, min_tail)
    if not tail:
        return None, None
    level = statistics.median(tail)
    return level, 1.4826 * statistics.median(abs(v - level) for v in tail)


def acceptance_level(accepted: list, drafted: list) -> float | None:
    """Mean per-step acceptance over steps that drafted: the fixed point of the EWMA fed those steps."""
    ratios = [a / d for a, d in zip(accepted, drafted) if a is not None and d and not _nan(a) and not _nan(d)]
    return statistics.fmean(ratios) if ratios else None


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def settle(points: pd.DataFrame, band: float = BAND, hold: int = HOLD, min_tail: int = MIN_TAIL) -> list[dict]:
    """Settling after every shift in one arm's trace of one engine instance.

    Args:
        points: the arm's trace points, columns step, t_s, ewma, draft_length, part, segment.

    Returns:
        One dict per shift (keys of COLUMNS from "shift" on); settling_steps / settling_s are None when the
        EWMA did not settle within the part, and `reason` says why.

    Raises:
        ValueError: band <= 0, hold < 1 or min_tail < 1.
    """
    if band <= 0 or hold < 1 or min_tail < 1:
        raise ValueError(f"band must be > 0 and hold, min_tail >= 1 (got {band}, {hold}, {min_tail})")
    pts = points.sort_values("step").reset_index(drop=True)
    if pts.empty:
        return []
    step, t, ewma = pts.step.tolist(), pts.t_s.tolist(), pts.ewma.tolist()
    parts, segments, lengths = pts.part.tolist(), pts.segment.tolist(), pts.draft_length.tolist()
    accepted = pts.accepted.tolist() if "accepted" in pts else [None] * len(pts)
    drafted = pts.drafted.tolist() if "drafted" in pts else [None] * len(pts)
    per_step = _median_step_s(step, t, segments)
    starts = [i for i in range(1, len(pts)) if parts[i] != parts[i - 1]]
    out = []
    for n, i in enumerate(starts, 1):
        end = next((j for j in range(i + 1, len(pts)) if parts[j] != parts[i]), len(pts))
        previous = max([0, *(j for j in starts if j < i)])
        tail_level, noise = steady(ewma[i:end], min_tail)
        level = acceptance_level(accepted[i:end], drafted[i:end]) if tail_level is not None else None
        level = tail_level if level is None else level
        half = None if level is None else max(band, 2 * noise)
        span = step[end - 1] - step[i] + 1
        switches = sum(1 for j in range(i + 1, end) if lengths[j] != lengths[j - 1])
        row = {"shift": n, "from_part": parts[i - 1], "to_part": parts[i], "shift_step": step[i],
               "level_before": acceptance_level(accepted[previous:i], drafted[previous:i]), "level_after": level,
               "band": half,
               "ewma_noise_after": noise, "settling_steps": None, "settling_s": None,
               "first_length_change_steps": next((step[j] - step[i] for j in range(i, end)
                                                  if lengths[j] != lengths[i - 1]), None),
               "length_switches_per_100_steps": 100.0 * switches / span, "reason": None}
        if level is None:
            row["reason"] = "no EWMA in the new part (adaptive draft length off)"
        else:
            settled = next((s for s in range(i, end) if all(abs(e - level) <= half for e in ewma[s:end])), None)
            if settled is None or end - settled < hold:
                row["reason"] = (f"did not stay within ±{half:.3f} of {level:.3f} for {hold} points before the "
                                 f"part ended ({end - i} points)")
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
    groups = frame.groupby(["run_id", "instance", "arm"], sort=True) if not frame.empty else []
    for (run_id, instance, arm), points in groups:
        first = points.iloc[0]
        rows += [{"run_id": run_id, "instance": instance, "arm": arm, "label": first.label,
                  "ewma_alpha": first.ewma_alpha, **row} for row in settle(points, **rule)]
    return pd.DataFrame(rows, columns=COLUMNS)
