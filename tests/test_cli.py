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
NCU_CSV = "tests/fixtures/ncu/h100_profiler_range_raw.csv"  # relative to the repository root


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


def _one_line_error(proc, needle):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("nwor: error:"), proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_version_and_plain_help():
    import nwor as package

    proc = nwor("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"nwor {package.__version__}"
    for args in (("--help",), ("run", "--help"), ("plan", "--help")):
        proc = nwor(*args)
        assert proc.returncode == 0 and "--help" in proc.stdout and "<bool>" not in proc.stdout, proc.stdout


def test_a_grid_named_twice_runs_once(tmp_path):
    proc = nwor("plan", "adaptive_grid", "adaptive_grid", "--outputs", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "16 runs: 0 done, 16 to run" in proc.stdout


@pytest.mark.parametrize("file_at", ["outputs", "outputs/smoke", "outputs/smoke/adaptive_grid"])
@pytest.mark.parametrize("command", ["plan", "status", "run"])
def test_a_file_where_an_outputs_folder_should_be(tmp_path, file_at, command):
    (tmp_path / file_at).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file_at).write_text("not a folder")
    args = (command, "adaptive_grid") if command != "status" else (command,)
    _one_line_error(nwor(*args, "--outputs", str(tmp_path / "outputs")), f"{file_at} is a file, not a folder")


def test_plan_and_status_honour_overrides(tmp_path):
    from nwor.execute import run_paths
    from nwor.grid import expand_all
    from nwor.results import envelope, write_result

    spec = expand_all(["adaptive_grid"], "smoke", overrides={"tensor_parallel_size": 2})[0]
    write_result(run_paths(spec, root=tmp_path)[0], envelope(spec, "ok"))
    with_override = nwor("status", "--tensor-parallel-size", "2", "--outputs", str(tmp_path))
    assert "1 done" in with_override.stdout and "stale" not in with_override.stdout, with_override.stdout
    assert "1 stale" in nwor("status", "--outputs", str(tmp_path)).stdout
    assert "16 runs: 1 done" in nwor("plan", "adaptive_grid", "--tensor-parallel-size", "2",
                                     "--outputs", str(tmp_path)).stdout


def test_status_labels_a_corrupt_result_with_its_full_reason(tmp_path):
    from nwor.execute import run_paths
    from nwor.grid import expand_all

    spec = expand_all(["adaptive_grid"], "smoke")[0]
    path = Path(run_paths(spec, root=tmp_path)[0])
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "status": "ok", "spec": {"trunc')
    proc = nwor("status", "--outputs", str(tmp_path))
    assert "1 corrupt" in proc.stdout and "stale" not in proc.stdout, proc.stdout
    assert f"corrupt: adaptive_grid/{spec.run_id}: cannot read result" in proc.stdout
    assert "Unterminated string" in proc.stdout  # the JSON error, not cut at 60 characters


def test_tensor_parallel_above_the_machines_capacity_is_refused_before_any_kernel(tmp_path):
    from nwor.engine import parallel_capacity

    capacity, _ = parallel_capacity()
    if capacity is None:
        pytest.skip("this machine sets no tensor-parallel limit")
    out = tmp_path / "outputs"
    proc = nwor("run", "adaptive_grid", "--tensor-parallel-size", str(capacity + 1), "--outputs", str(out))
    _one_line_error(proc, f"invalid tensor_parallel_size={capacity + 1}: this machine has {capacity} ")
    assert not out.exists()


def test_ncu_summarize_non_utf8_csv(tmp_path):
    (tmp_path / "x.csv").write_bytes(b'"ID","Kernel Name"\n\xff\xfe\x00garbage\n')
    _one_line_error(nwor("ncu", "summarize", "x.csv", cwd=tmp_path), "x.csv: not an ncu CSV export (not UTF-8")
