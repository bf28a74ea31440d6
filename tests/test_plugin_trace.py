"""nwor.plugin.trace: the per-step controller trace's bound, acceptance bookkeeping and compaction rule."""
from __future__ import annotations

import itertools

import pytest

from nwor.plugin.trace import COLUMNS, MAX_POINTS, NO_GATE, NOT_GATED, StepTrace, compact


def _clock():
    ticks = itertools.count()
    return lambda: 0.5 * next(ticks)


def test_acceptance_goes_to_the_latest_step_without_one():
    trace = StepTrace(clock=_clock())
    trace.start(0.5, 4, NO_GATE)
    trace.start(0.45, 4, NO_GATE)  # the first step's drafts are verified before the second's propose ...
    trace.observe(3, 4)  # ... but booked here, so they land on the latest step with no result yet
    trace.observe(1, 4)  # a second booking for the same step is ignored, never shifted onto another
    cols = trace.steps(lambda i: None)
    assert cols["drafted"] == [None, 4] and cols["accepted"] == [None, 3]
    assert cols["t_s"] == [0.0, 0.5] and cols["ewma"] == [0.5, 0.45]
    assert cols["tokens_stopped"] == [None, None] and cols["checks"] == [None, None]  # early exit off: null


def test_tokens_stopped_are_checks_minus_rows_that_ran():
    trace = StepTrace(clock=_clock())
    trace.start(None, 6, 0)
    trace.add_checks(8)
    trace.start(None, 2, NOT_GATED)  # too short to gate: nothing could stop
    trace.start(None, 6, None)  # the device slots ran out: unknown, not zero
    trace.add_checks(8)
    cols = trace.steps({0: 5}.get)
    assert cols["tokens_stopped"] == [3, 0, None] and cols["checks"] == [8, 0, 8]


def test_raw_steps_are_bounded_and_drops_counted():
    trace = StepTrace(max_steps=3, clock=_clock())
    for _ in range(5):
        trace.start(0.5, 4, NO_GATE)
        trace.observe(1, 4)
    assert len(trace.rows) == 3 and trace.dropped_steps == 2
    assert trace.rows[-1][3:5] == [4, 1]  # a dropped step's booking never lands on a kept one


def test_segments_mark_the_next_step():
    trace = StepTrace(clock=_clock())
    trace.mark({"round": 0, "part": 0})
    trace.start(0.5, 4, NO_GATE)
    trace.mark({"round": 1, "part": 1})
    assert trace.segments == [{"step": 0, "round": 0, "part": 0}, {"step": 1, "round": 1, "part": 1}]


def _columns(n):
    return {"step": list(range(n)), "t_s": [0.01 * i for i in range(n)], "ewma": [i / n for i in range(n)],
            "draft_length": [2 + i % 3 for i in range(n)], "drafted": [4] * n, "accepted": [1] * n,
            "tokens_stopped": [None if i == 7 else 0 for i in range(n)], "checks": [2] * n}


def test_short_traces_are_kept_step_by_step():
    out = compact(_columns(10))
    assert out["bucket_steps"] == 1 and out["points"] == out["steps"] == 10
    assert out["ewma"] == pytest.approx([i / 10 for i in range(10)], abs=1e-6)


def test_long_traces_are_bucketed_under_the_bound():
    n = 5 * MAX_POINTS + 3
    out = compact(_columns(n))
    size = out["bucket_steps"]
    assert size == 6 and out["points"] <= MAX_POINTS and out["steps"] == n
    assert out["step"][:2] == [0, size]
    assert out["drafted"][0] == 4 * size and out["accepted"][0] == size  # sums over the bucket
    assert out["tokens_stopped"][1] is None and out["tokens_stopped"][0] == 0  # one unknown step: bucket unknown
    assert out["ewma"][0] == pytest.approx((size - 1) / n, abs=1e-6)  # the bucket's last step
    assert out["draft_length"][0] == 2 + (size - 1) % 3
    assert all(len(out[c]) == out["points"] for c in COLUMNS)


def test_an_arm_without_the_controller_keeps_null_ewma():
    columns = {**_columns(4), "ewma": [None] * 4}
    assert compact(columns)["ewma"] == [None] * 4


def test_compact_rejects_bad_input():
    with pytest.raises(ValueError, match="max_points"):
        compact(_columns(3), max_points=0)
    broken = _columns(3)
    broken["ewma"].pop()
    with pytest.raises(ValueError, match="differ in length"):
        compact(broken)
