"""The adaptive controller's per-step trace (EWMA, chosen draft length, drafted / accepted / stopped tokens,
time), recorded on the host in the engine process and compacted to a bounded size before it leaves it.

Pure: imports nothing from vLLM or torch, so the bound and the compaction rule are unit-tested directly.
"""
from __future__ import annotations

import math
import time

# Steps kept per trace in the engine process; later steps are counted in `dropped_steps`, not kept.
MAX_RAW_STEPS = 20_000
# Points per trace in the result JSON: longer traces are cut into equal buckets of consecutive steps.
MAX_POINTS = 512
NO_GATE, NOT_GATED = "off", "none"  # a step's gate slot when early exit is off / had nothing to gate
COLUMNS = ("step", "t_s", "ewma", "draft_length", "drafted", "accepted", "tokens_stopped", "checks")
COMPACTION_RULE = {
    "max_points": MAX_POINTS,
    "max_raw_steps": MAX_RAW_STEPS,
    "bucket": "ceil(steps / max_points) consecutive steps per point (1 when steps <= max_points)",
    "step": "first step of the bucket", "t_s": "seconds from the trace's first step to the bucket's first step",
    "ewma": "the EWMA the bucket's last step chose its length from",
    "draft_length": "the bucket's last chosen draft length",
    "drafted, accepted, tokens_stopped, checks": "sums over the bucket (null when any step's value is unknown)",
}


class StepTrace:
    """One arm's steps in one engine: appended by the drafter, read once per arm per engine instance.

    A step's acceptance arrives one step later (the drafter books it before the next propose), so
    `observe` fills the latest step that has none yet.
    """

    def __init__(self, max_steps: int = MAX_RAW_STEPS, clock=time.monotonic):
        self.max_steps = max_steps
        self.clock = clock
        # [t, ewma, draft_length, drafted, accepted, checks, slot]; slot: NO_GATE (early exit off), NOT_GATED
        # (on, but this step had no gateable iteration) or the device slot of the step's ungated-row count.
        self.rows: list[list] = []
        self.dropped_steps = 0
        self.segments: list[dict] = []  # {"step": first step, **what the caller marked}

    def start(self, ewma: float | None, draft_length: int, slot) -> None:
        """A propose: the EWMA the length was chosen from (None when not maintained), the length drafted, and
        the step's gate slot (NO_GATE, NOT_GATED, an int, or None when the device slots ran out)."""
        if len(self.rows) >= self.max_steps:
            self.dropped_steps += 1
            return
        self.rows.append([self.clock(), ewma, draft_length, None, None, 0, slot])

    def add_checks(self, rows: int) -> None:
        """Rows the confidence gate checked in this step's loop iteration (host count)."""
        if self.rows and not self.dropped_steps:
            self.rows[-1][5] += rows

    def observe(self, accepted: int, drafted: int) -> None:
        """Verification result of the latest step that drafted and has no result yet."""
        if self.rows and self.rows[-1][3] is None and not self.dropped_steps:
            self.rows[-1][3], self.rows[-1][4] = drafted, accepted

    def mark(self, segment: dict) -> None:
        """A segment (e.g. a measured batch and its workload part) starts at the next step."""
        self.segments.append({"step": len(self.rows) + self.dropped_steps, **segment})

    def steps(self, ran_in_slot) -> dict:
        """The raw columns (`COLUMNS`); `ran_in_slot(i)` gives the rows that ran ungated in device slot i
        (None if unknown). Tokens stopped = checks - ran; null with early exit off or a slot unknown."""
        t0 = self.rows[0][0] if self.rows else 0.0
        out = {c: [] for c in COLUMNS}
        for i, (t, ewma, length, drafted, accepted, checks, slot) in enumerate(self.rows):
            if slot == NO_GATE:
                stopped, checks = None, None
            elif slot == NOT_GATED:
                stopped = 0
            else:
                ran = None if slot is None else ran_in_slot(slot)
                stopped = None if ran is None else checks - ran
            for name, value in zip(COLUMNS, (i, t - t0, ewma, length, drafted, accepted, stopped, checks)):
                out[name].append(value)
        return out


def compact(columns: dict, max_points: int = MAX_POINTS) -> dict:
    """Cut raw step columns (`COLUMNS`) to at most `max_points` points by the rule in COMPACTION_RULE.

    Raises:
        ValueError: max_points < 1 or the columns differ in length.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    n = len(columns["step"])
    if any(len(columns[c]) != n for c in COLUMNS):
        raise ValueError("trace columns differ in length")
    size = max(1, math.ceil(n / max_points))
    out = {c: [] for c in COLUMNS}
    for start in range(0, n, size):
        end = min(n, start + size)
        out["step"].append(columns["step"][start])
        out["t_s"].append(round(columns["t_s"][start], 6))
        ewma = columns["ewma"][end - 1]  # None where the arm does not run the adaptive controller
        out["ewma"].append(None if ewma is None else round(ewma, 6))
        out["draft_length"].append(columns["draft_length"][end - 1])
        for name in ("drafted", "accepted", "tokens_stopped", "checks"):
            values = columns[name][start:end]
            out[name].append(None if any(v is None for v in values) else sum(values))
    return {"steps": n, "bucket_steps": size, "points": len(out["step"]), **out}
