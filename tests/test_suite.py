"""Tests for nwor.suite: each run's state from the files on disk, the time estimate, and the outputs lock."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nwor.config import RunSpec
from nwor.errors import ConfigError, LockHeld
from nwor.execute import notebook_path, run_paths
from nwor.results import envelope, failure, write_result
from nwor.suite import RunState, SuiteLock, estimate_s, run_state

SPEC = RunSpec(run_id="run1_x", grid="adaptive_grid", profile="smoke", num_requests=3)


def _result_path(spec, root) -> Path:
    return Path(run_paths(spec, root=root)[0])


def test_pending_without_file(tmp_path):
    st = run_state(SPEC, root=tmp_path)
    assert st.status == "pending" and st.reason is None and st.duration_s is None
    assert Path(st.result_path).resolve() == (tmp_path / "smoke" / "adaptive_grid" / "run1_x.json").resolve()


def test_done(tmp_path):
    path = write_result(_result_path(SPEC, tmp_path), envelope(SPEC, "ok", metrics={}))
    notebook_path(path).write_text(json.dumps({"metadata": {"papermill": {"duration": 12.5}}}))
    st = run_state(SPEC, root=tmp_path)
    assert st.status == "done" and st.reason is None
    assert st.duration_s == pytest.approx(12.5, abs=1e-9)


def test_done_without_notebook_has_no_duration(tmp_path):
    write_result(_result_path(SPEC, tmp_path), envelope(SPEC, "ok"))
    st = run_state(SPEC, root=tmp_path)
    assert st.status == "done" and st.duration_s is None


@pytest.mark.parametrize("status", ["failed", "refused"])
def test_failed_and_refused_keep_reason(tmp_path, status):
    write_result(_result_path(SPEC, tmp_path), failure(SPEC, ConfigError("boom happened"), status=status))
    st = run_state(SPEC, root=tmp_path)
    assert st.status == status
    assert st.reason == "boom happened"


def test_stale_when_params_differ(tmp_path):
    older = RunSpec(run_id="run1_x", grid="adaptive_grid", profile="smoke", num_requests=4)
    write_result(_result_path(SPEC, tmp_path), envelope(older, "ok"))
    st = run_state(SPEC, root=tmp_path)
    assert st.status == "stale"
    assert "parameters changed" in st.reason
    assert run_state(older, root=tmp_path).status == "done"


def test_failed_with_other_params_is_stale(tmp_path):
    older = RunSpec(run_id="run1_x", grid="adaptive_grid", profile="smoke", temperature=0.7)
    write_result(_result_path(SPEC, tmp_path), failure(older, "x"))
    assert run_state(SPEC, root=tmp_path).status == "stale"


@pytest.mark.parametrize(("text", "status", "needle"), [
    ('{"schema_version": 99, "status": "ok"}', "stale", "schema_version 99, this nwor reads"),
    ('{"schema_version": 1, "status": "ok"}', "stale", "schema_version 1, this nwor reads"),  # before design/replicates
    ("{broken", "corrupt", "cannot read result"),
    ("[1, 2]", "corrupt", "not a nwor result"),
    ('{"schema_version": 2, "status": "maybe", "spec": {}}', "corrupt", "no valid status or spec"),
])
def test_other_schema_is_stale_and_unreadable_json_corrupt(tmp_path, text, status, needle):
    path = _result_path(SPEC, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    st = run_state(SPEC, root=tmp_path)
    assert st.status == status and needle in st.reason and str(path.name) in st.reason


def test_estimate():
    def st(d):
        return RunState(SPEC, "done", None, d, "x.json")

    assert estimate_s([st(10.0), st(20.0), st(None)], 600) == pytest.approx(15.0, abs=1e-9)
    assert estimate_s([st(None)], 600) == 600
    assert estimate_s([], None) is None


def test_lock_second_acquisition_raises(tmp_path):
    with SuiteLock(tmp_path) as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            SuiteLock(tmp_path).__enter__()
        assert lock.path.exists()  # the failed attempt did not remove the holder's lock
    assert not (tmp_path / ".nwor.lock").exists()
    with SuiteLock(tmp_path):  # free again
        pass


def test_lock_of_dead_process_is_cleared(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lock_path = tmp_path / ".nwor.lock"
    lock_path.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "since": "earlier"}))
    with SuiteLock(tmp_path):
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not lock_path.exists()


def test_lock_of_live_process_is_kept(tmp_path):
    lock_path = tmp_path / ".nwor.lock"
    lock_path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": "now"}))
    with pytest.raises(LockHeld):
        SuiteLock(tmp_path).__enter__()
    assert json.loads(lock_path.read_text())["pid"] == os.getppid()


def test_lock_from_another_host_is_respected(tmp_path):
    lock_path = tmp_path / ".nwor.lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": socket.gethostname() + "-elsewhere", "since": "now"}))
    with pytest.raises(LockHeld, match="elsewhere"):
        SuiteLock(tmp_path).__enter__()


def test_unreadable_lock_is_cleared(tmp_path):
    (tmp_path / ".nwor.lock").write_text("not json")
    with SuiteLock(tmp_path):
        pass


def test_log_keeps_each_event_on_one_line_and_closes_abandoned_starts(tmp_path):
    from nwor.paths import GRID_LOG, MASTER_LOG
    from nwor.suite import SuiteLog

    log = SuiteLog(tmp_path / "smoke", tmp_path)
    other = RunSpec(run_id="run2_x", grid="adaptive_grid", profile="smoke")
    log.write(SPEC, "START")
    log.write(other, "START")
    log.write(other, "ERROR", "RuntimeError: boom\n  File x, line 2\nmore")
    log.close_abandoned()  # what the next runner does first: SPEC's runner was killed
    log.close_abandoned()  # and only once
    lines = (tmp_path / "smoke" / MASTER_LOG).read_text().splitlines()
    assert len(lines) == 4
    assert lines[2].endswith("ERROR    adaptive_grid/run2_x RuntimeError: boom | File x, line 2 | more")
    assert f"ABANDONED adaptive_grid/{SPEC.run_id} its runner stopped" in lines[3]
    assert (tmp_path / "smoke" / "adaptive_grid" / GRID_LOG).read_text().splitlines()[-1] == lines[3]
