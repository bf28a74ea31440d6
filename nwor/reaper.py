"""No orphaned engines: every process a runner starts carries the runner's id, and whatever outlives it ends.

`nwor run` puts NWOR_RUNNER_ID=<pid>-<start time> in its environment; the kernels, vLLM engine cores,
workers and multiprocessing resource trackers it starts, directly or not, inherit it (it survives
re-parenting to PID 1, unlike a process group or parent link). A watchdog in a session of its own, so
that `kill -9 -PGID` of the runner spares it, waits for the runner to end and then ends every process
still carrying the id; the next `nwor run` ends those of any runner that is gone (watchdog killed too).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

RUNNER_ENV = "NWOR_RUNNER_ID"
# Seconds an engine gets to shut down on SIGTERM (it frees shared memory), then SIGKILL.
GRACE_S = 3.0
# multiprocessing's resource tracker unlinks leaked shared memory once its clients are gone: let it.
TRACKER_GRACE_S = 2.0


def runner_id(pid: int | None = None) -> str:
    """`<pid>-<start time in ms>`: unique across PID reuse, so a live runner is never mistaken for a dead one."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def runner_alive(rid: str) -> bool:
    """Whether the process that took `rid` is still running (same PID and start time)."""
    try:
        pid = int(rid.split("-", 1)[0])
        return runner_id(pid) == rid
    except (ValueError, psutil.Error):
        return False


def carriers(rid: str | None = None) -> list[tuple[psutil.Process, str]]:
    """Processes (not this one) whose environment holds a runner id (`rid`, or any), with the id they hold."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            held = proc.environ().get(RUNNER_ENV)
        except psutil.Error:  # gone, a zombie, or another user's process (not ours to end)
            continue
        if held and (rid is None or held == rid):
            found.append((proc, held))
    return found


def _is_tracker(proc: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False


def _signal(procs: list[psutil.Process], signum: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            continue  # already gone


def end_processes(procs: list[psutil.Process]) -> int:
    """SIGTERM, then SIGKILL after GRACE_S; resource trackers last. Returns how many were still running."""
    trackers = [p for p in procs if _is_tracker(p)]
    others = [p for p in procs if p not in trackers]
    _signal(others, signal.SIGTERM)
    _, alive = psutil.wait_procs(others, timeout=GRACE_S)
    _signal(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=GRACE_S)
    _, alive = psutil.wait_procs(trackers, timeout=TRACKER_GRACE_S)
    _signal(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=GRACE_S)
    return len(procs)


def reap(rid: str) -> int:
    """End every process (but this one) that carries `rid`; returns how many there were."""
    return end_processes([proc for proc, _ in carriers(rid)])


def reap_orphans() -> int:
    """End the processes of runners that are gone (killed with their watchdog); returns how many."""
    dead: dict[str, bool] = {}
    orphans = []
    for proc, held in carriers():
        if held not in dead:
            dead[held] = not runner_alive(held)
        if dead[held]:
            orphans.append(proc)
    return end_processes(orphans)


def mark_runner() -> str:
    """Give this process (and so all it starts) a runner id, and start its watchdog; returns the id."""
    rid = runner_id()
    os.environ[RUNNER_ENV] = rid
    env = {k: v for k, v in os.environ.items() if k != RUNNER_ENV}  # the watchdog must not end itself
    # stdin is a pipe only this process holds (not inherited: CLOEXEC): EOF there means the runner ended.
    # Run as a file, not `-m nwor.reaper`: importing the nwor package would keep ~100 MB (pandas) idle all suite.
    code = f"import runpy; runpy.run_path({__file__!r}, run_name='__main__')"
    watchdog = subprocess.Popen([sys.executable, "-c", code, rid], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    _WATCHDOGS.append(watchdog)  # keep the pipe open for this process's lifetime
    return rid


_WATCHDOGS: list[subprocess.Popen] = []


def main(argv: list[str] | None = None) -> int:
    """Watchdog entry point: `python nwor/reaper.py RUNNER_ID`, stdin a pipe from the runner."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the runner, not its watchdog
    while sys.stdin.buffer.read(4096):
        continue
    reap(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
