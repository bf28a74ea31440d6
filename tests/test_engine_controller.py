"""The controller trace on the real CPU engine: a short shifting-workload run with two EWMA-alpha arms in one
engine, measured by `nwor.bench.measure` in a subprocess whose trace bound is lowered so that compaction
happens for real. Run as a script, this file is that subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nwor.config import RunSpec
from nwor.controller_trace import trace_rows
from nwor.settling import settling_table

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[1]
MAX_POINTS = 24  # lowered in the subprocess: each arm's ~40-100 steps must be bucketed under it
SPEC = RunSpec(run_id="ctl_engine_test", grid="adhoc", profile="smoke", num_speculative_tokens=4, num_requests=2,
               max_new_tokens=48, measured_batches=2, warmup_batches=1, warmup_max_batches=2,
               adaptive_draft_length=True, enforce_eager=True,
               prompt_shift=({"prompt_set": "builtin:code", "temperature": 0.0},
                             {"prompt_set": "builtin:creative", "temperature": 0.7}),
               arms=({"name": "alpha0.4", "ewma_alpha": 0.4, "label": "alpha 0.4 (nwor extension)"},))


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("controller") / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's nwor, not the venv's editable install
    proc = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_arm_has_a_bounded_trace(doc):
    (replicate,) = doc["replicates"]
    assert set(replicate["controller_trace"]) == {"run", "alpha0.4"}
    for arm, trace in replicate["controller_trace"].items():
        assert trace["status"] == "ok", (arm, trace)
        assert trace["points"] <= MAX_POINTS < trace["steps"] and trace["bucket_steps"] >= 2, arm
        assert all(len(trace[c]) == trace["points"] for c in ("step", "t_s", "ewma", "draft_length", "accepted"))
        assert [s["part"] for s in trace["segments"]] == [0, 1]  # one measured batch per part
        assert all(0.0 <= e <= 1.0 for e in trace["ewma"]) and set(trace["draft_length"]) <= {2, 4, 8}
        assert trace["tokens_stopped"] == [None] * trace["points"]  # early exit off: null, never zeros
        assert sum(a for a in trace["accepted"] if a is not None) > 0
    # The EWMA each arm reports at the end is its own: the arms share the engine, not the controller.
    run, fast = (replicate["controller_trace"][a]["ewma"] for a in ("run", "alpha0.4"))
    assert run != fast


def test_seed_paths_and_counters_are_unchanged(doc):
    assert doc["summary"]["per_mode"][0]["latency_avg_s"] > 0 and doc["results"]
    assert [b.get("part") for b in doc["replicates"][0]["batches"] if b["arm"] == "run"] == [0, 1]


def test_settling_is_computed_for_the_shift(doc):
    table = settling_table(pd.DataFrame(trace_rows(doc)))
    assert set(table.arm) == {"run", "alpha0.4"} and (table["shift"] == 1).all()
    for row in table.itertuples():
        assert row.level_after is not None and row.level_before is not None
        assert (row.settling_steps is not None and row.settling_steps >= 0) or "did not stay" in row.reason


def _drive(out: str) -> None:
    import nwor.plugin.trace
    from nwor.bench import measure
    from nwor.results import write_result

    nwor.plugin.trace.MAX_POINTS = MAX_POINTS  # what nwor.plugin.read_trace asks the engine for
    write_result(out, measure(SPEC))


if __name__ == "__main__":
    _drive(sys.argv[1])
