"""`nwor run --executor ray` on a local Ray cluster of 2 CPUs: the real engine on the tiny models, two runs at once.

One module-scoped suite serves every assertion: start the Ray suite on four runs and Ctrl-C it while its
first runs execute (nothing may be written), start it again and kill -9 the driver's
process group once the first result exists, check that the Ray cluster, its workers and their kernels die
with it, run the same command again (it must finish the rest without redoing a finished run), then once more
(a no-op).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nwor.reaper import carriers
from nwor.results import read_result

pytestmark = pytest.mark.engine

NWOR = str(Path(sys.executable).with_name("nwor"))
RUNS = ["run1_r12_t64_temp0.0_d10_adaptive0", "run1_r12_t64_temp0.0_d10_adaptive1",
        "run2_r12_t64_temp0.7_d10_adaptive0", "run2_r12_t64_temp0.7_d10_adaptive1"]


def _cmd(outputs: Path) -> list[str]:
    return [NWOR, "run", "adaptive_grid", "--profile", "smoke", "--outputs", str(outputs), "--executor", "ray",
            "--local-cpus", "2", *[arg for run in RUNS for arg in ("--only", run)]]


def _left_behind(pid: int) -> list[str]:
    """Names of processes still carrying the id of the runner whose pid was `pid` (Ray's, kernels, engines)."""
    return sorted(proc.name() for proc, held in carriers() if held.startswith(f"{pid}-"))


def _kernel_up(pid: int) -> bool:
    """Whether a notebook kernel started under the runner whose pid was `pid` is running (a run executes)."""
    for proc, held in carriers():
        try:
            if held.startswith(f"{pid}-") and "ipykernel" in " ".join(proc.cmdline()):
                return True
        except psutil.Error:  # ended meanwhile
            continue
    return False


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    grid_dir = outputs / "smoke" / "adaptive_grid"
    master_log = outputs / "smoke" / "master_experiment.log"
    # Started with SIGINT ignored, as a background job of a non-interactive shell is (`make test &`): a suite
    # sent SIGINT must stop all the same.
    interrupted = subprocess.Popen(_cmd(outputs), start_new_session=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    # Ctrl-C once the runs execute: STARTed in the log and a run's kernel up on a Ray worker (not a fixed sleep).
    while not (master_log.exists() and "START" in master_log.read_text() and _kernel_up(interrupted.pid)) \
            and interrupted.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    interrupted.send_signal(signal.SIGINT)
    interrupted_out = interrupted.communicate(timeout=120)[0]
    interrupted_files = sorted(p.name for p in grid_dir.iterdir() if p.name != "experiment.log")
    interrupted_log = master_log.read_text()
    deadline = time.monotonic() + 30
    while _left_behind(interrupted.pid) and time.monotonic() < deadline:
        time.sleep(1)
    interrupted_left = _left_behind(interrupted.pid)
    proc = subprocess.Popen(_cmd(outputs), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not any((grid_dir / f"{r}.json").exists() for r in RUNS) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    finished_before_kill = {r: (grid_dir / f"{r}.json").stat().st_mtime_ns for r in RUNS
                            if (grid_dir / f"{r}.json").exists()}
    assert finished_before_kill, f"no run ever finished: {proc.communicate(timeout=30)[0][-2000:]}"
    seen_running = _left_behind(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-suite; Ray's processes run in sessions of their own
    proc.wait()
    deadline = time.monotonic() + 60
    while _left_behind(proc.pid) and time.monotonic() < deadline:
        time.sleep(1)
    left_behind = _left_behind(proc.pid)
    # A run may have finished between the check above and the kill: count what was on disk at the kill.
    finished_before_kill = {r: (grid_dir / f"{r}.json").stat().st_mtime_ns for r in RUNS
                            if (grid_dir / f"{r}.json").exists()}
    first_log = master_log.read_text()[len(interrupted_log):]
    resumed = subprocess.run(_cmd(outputs), capture_output=True, text=True, timeout=900)
    retried = None
    if resumed.returncode != 0:
        # As tests/test_engine_suite.py: a rare engine-start crash is recorded as failed and retried next time.
        retried = subprocess.run(_cmd(outputs), capture_output=True, text=True, timeout=900)
    noop = subprocess.run(_cmd(outputs), capture_output=True, text=True, timeout=300)
    docs = {run: read_result(grid_dir / f"{run}.json") for run in RUNS}
    return {"interrupted": interrupted, "interrupted_out": interrupted_out, "interrupted_files": interrupted_files,
            "interrupted_log": interrupted_log, "interrupted_left": interrupted_left, "outputs": outputs, "grid_dir": grid_dir, "before": finished_before_kill, "seen_running": seen_running,
            "left_behind": left_behind, "first_log": first_log, "resumed": resumed, "retried": retried,
            "noop": noop, "docs": docs}


def test_ctrl_c_cancels_the_tasks_and_writes_nothing(suite):
    assert suite["interrupted"].returncode == 130, suite["interrupted_out"][-2000:]
    assert "interrupted: 4 runs remain" in suite["interrupted_out"]
    assert suite["interrupted_files"] == [], suite["interrupted_files"]  # no JSON, notebook or partial file
    assert suite["interrupted_log"].count("CANCELLED") == len(RUNS), suite["interrupted_log"]
    assert suite["interrupted_left"] == []


def test_two_runs_execute_at_once(suite):
    events = re.findall(r"\] (START|COMPLETE|ERROR)\s+adaptive_grid/", suite["first_log"])
    assert events[:2] == ["START", "START"], suite["first_log"]
    assert "ray::" in " ".join(suite["seen_running"]) or "raylet" in suite["seen_running"], suite["seen_running"]


def test_killing_the_driver_ends_ray_and_its_kernels(suite):
    assert suite["seen_running"], "the driver's Ray processes should carry its runner id"
    assert suite["left_behind"] == [], f"left running after the driver was killed: {suite['left_behind']}"


def test_resume_finishes_the_rest_without_redoing_finished_runs(suite):
    final = suite["retried"] or suite["resumed"]
    assert final.returncode == 0, final.stdout + final.stderr
    done = len(suite["before"])
    assert f"resuming: {done} runs done, {len(RUNS) - done} remain" in suite["resumed"].stdout
    # After the Ctrl-C'd invocation, which STARTed (and CANCELLED) every run once.
    log = (suite["outputs"] / "smoke" / "master_experiment.log").read_text()[len(suite["interrupted_log"]):]
    for run, mtime in suite["before"].items():
        assert (suite["grid_dir"] / f"{run}.json").stat().st_mtime_ns == mtime
        assert log.count(f"START    adaptive_grid/{run} ") == 1
        assert f"SKIP     adaptive_grid/{run}" in log
    assert "ABANDONED" in log or done == len(RUNS)  # the runs the kill cut short are closed in the log


def test_results_are_complete_and_say_where_they_ran(suite):
    for run, doc in suite["docs"].items():
        assert doc["status"] == "ok", doc.get("error")
        assert doc["placement"]["executor"] == "ray" and doc["placement"]["resources"] == {"CPU": 1.0}
        # The machine by its hashed id (the run's own provenance says the same), never a host name.
        assert doc["placement"]["machine_id"] == doc["env"]["machine_id"] and "hostname" not in doc["placement"]
        assert doc["summary"]["per_mode"][0]["latency_avg_s"] > 0
        # The driver's OMP_NUM_THREADS (here: this test's), not the 1 Ray puts in its workers: a parallel run
        # must measure the engine a local run measures.
        assert doc["env"]["env_vars"].get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
        notebook = (suite["grid_dir"] / f"{run}.ipynb").read_text()
        assert json.loads(notebook)["metadata"]["papermill"]["duration"] > 0
        assert "nwor-ray-" not in notebook  # the worker's private folder is not named in shared artifacts
        assert (suite["grid_dir"] / f"{run}.vllm.log").stat().st_size > 0
    assert not [p.name for p in suite["grid_dir"].iterdir() if p.name.startswith(".")]  # no torn temporaries


def test_third_invocation_is_a_no_op(suite):
    assert suite["noop"].returncode == 0
    assert f"nothing to do: all {len(RUNS)} runs are done" in suite["noop"].stdout
