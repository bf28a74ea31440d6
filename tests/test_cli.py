"""Tests for the `nwor` command line, run as a subprocess: plan, bad input (one line, exit 2, nothing
created), dry runs, and `nwor ncu summarize` on a real ncu CSV export."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_grid import EXPECTED_IDS

REPO = Path(__file__).resolve().parents[1]
NWOR = Path(sys.executable).parent / "nwor"
if not NWOR.exists():
    NWOR = REPO / ".venv" / "bin" / "nwor"
NCU_CSV = "../shared/fixtures/ncu/h100_profiler_range_raw.csv"  # relative to the repository root


def nwor(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TARGET_MODEL", "DRAFT_MODEL", "TENSOR_PARALLEL_SIZE", "NWOR_OUTPUTS")}
    return subprocess.run([str(NWOR), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_plan_full_lists_27_ids(tmp_path):
    out = tmp_path / "outputs"
    proc = nwor("plan", "all", "--profile", "full", "--outputs", str(out))
    assert proc.returncode == 0, proc.stderr
    for rid in EXPECTED_IDS:
        assert rid in proc.stdout, rid
    assert "30 runs: 0 done, 30 to run" in proc.stdout  # the seed's 27 + calibration_grid's 3
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (("plan", "bogus"), "unknown grid 'bogus'"),
    (("run", "--profile", "nope"), "unknown profile 'nope'"),
    (("run", "--only", "nope"), "unknown run id 'nope'"),
])
def test_bad_input_one_line_exit_2_nothing_created(tmp_path, args, needle):
    out = tmp_path / "outputs"
    proc = nwor(*args, "--outputs", str(out))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nwor: error:")
    assert needle in lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_dry_run_runs_and_writes_nothing(tmp_path):
    out = tmp_path / "outputs"
    proc = nwor("run", "all", "--profile", "smoke", "--dry-run", "--outputs", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 30 of 30 runs would execute" in proc.stdout
    assert "scenario_d_creative_writing" in proc.stdout
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not (REPO / NCU_CSV).is_file(), reason=f"ncu fixture not found: {REPO / NCU_CSV}")
def test_ncu_summarize_csv():
    proc = nwor("ncu", "summarize", NCU_CSV)
    assert proc.returncode == 0, proc.stderr
    assert "results: 5 " in proc.stdout
    assert "dram__bytes_write.sum" in proc.stdout


@pytest.mark.parametrize("name", [
    "none.ncu-rep",
    "none.csv",
])
def test_ncu_summarize_missing_file(tmp_path, name):
    proc = nwor("ncu", "summarize", name, cwd=tmp_path)  # a short path: see test_long_error_stays_one_line
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("nwor: error:"), proc.stderr


def test_long_error_stays_one_line(tmp_path):
    out = tmp_path / "outputs"
    proc = nwor("run", "--only", "x" * 200, "--outputs", str(out))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not out.exists()
