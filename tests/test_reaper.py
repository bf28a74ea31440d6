"""nwor/reaper.py with real processes (no engine): the watchdog ends what a SIGKILLed runner started, even
outside its process group, and the next runner ends the processes of a dead runner but never a live one's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from nwor import reaper

# A stand-in runner: takes a runner id like `nwor run`, starts a child in a session of its own (as
# jupyter_client starts a kernel), prints the child's PID, and waits to be killed.
RUNNER = """
import subprocess, sys, time
from nwor import reaper
reaper.mark_runner()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int, create_time: float, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != create_time or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def _sleeper(runner_id: str) -> subprocess.Popen:
    env = {**os.environ, reaper.RUNNER_ENV: runner_id}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)


def test_watchdog_ends_the_tree_of_a_sigkilled_runner_group():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = psutil.Process(int(runner.stdout.readline()))
        assert child.environ()[reaper.RUNNER_ENV] == reaper.runner_id(runner.pid)
        os.killpg(runner.pid, signal.SIGKILL)  # the child is in another session: killpg alone spares it
        runner.wait()
        assert _gone(child.pid, child.create_time(), timeout_s=10), "the watchdog left the child running"
    finally:
        runner.kill()


def test_reap_orphans_ends_dead_runners_processes_only():
    dead = _sleeper("999999999-1")  # no such runner
    live = _sleeper(reaper.runner_id())  # this test process: alive
    try:
        time.sleep(0.5)  # let both exec, so /proc shows their environment
        assert reaper.reap_orphans() >= 1
        assert dead.wait(timeout=10) is not None
        assert live.poll() is None
        assert not reaper.runner_alive("999999999-1") and reaper.runner_alive(reaper.runner_id())
    finally:
        dead.kill()
        live.kill()
        live.wait()


@pytest.mark.parametrize("rid", ["", "x", "12-ab", f"{os.getpid()}-1"])
def test_runner_alive_rejects_malformed_and_reused_ids(rid):
    assert not reaper.runner_alive(rid)
