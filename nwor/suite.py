"""Running a suite of runs: status of each (done / failed / stale / pending), a lock, logs, progress, resume."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nwor.config import RunSpec, hash_params
from nwor.errors import FeatureUnavailable, LockHeld, NworError, OutputsUnwritable, RunFailed, SchemaError
from nwor.execute import run_notebook, run_paths
from nwor.paths import MASTER_LOG, RunPaths, profile_dir, run_dir
from nwor.results import STATUSES, failure, read_result, write_result


@dataclass(frozen=True)
class RunState:
    spec: RunSpec
    status: str  # done | failed | refused | corrupt | stale | pending
    reason: str | None
    duration_s: float | None
    result_path: str


def _duration(executed: Path) -> float | None:
    """papermill records each executed notebook's duration in its metadata."""
    try:
        return json.loads(executed.read_text())["metadata"]["papermill"]["duration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_state(spec: RunSpec, root=None) -> RunState:
    """Done only if the JSON says ok, reads under the current schema, and came from the same parameters."""
    result_path, _ = run_paths(spec, root=root)
    path = Path(result_path)
    if not path.exists():
        return RunState(spec, "pending", None, None, result_path)
    try:
        doc = read_result(path)
    except SchemaError as err:  # unreadable: corrupt; another schema version: stale (made by another nwor)
        return RunState(spec, "corrupt" if err.context.get("problem") == "unreadable" else "stale", str(err),
                        None, result_path)
    duration = _duration(RunPaths.from_result(path).notebook)
    if doc.get("status") not in STATUSES or not isinstance(doc.get("spec"), dict):
        return RunState(spec, "corrupt", f"{result_path}: no valid status or spec", duration, result_path)
    if hash_params(doc["spec"]) != spec.params_hash():
        return RunState(spec, "stale", "parameters changed since this result was made", duration, result_path)
    if doc["status"] == "ok":
        return RunState(spec, "done", None, duration, result_path)
    return RunState(spec, doc["status"], (doc.get("error") or {}).get("message"), duration, result_path)


def estimate_s(states: list[RunState], default_s: float | None) -> float | None:
    """Seconds per run: the mean of measured durations where known, else the profile's estimate."""
    known = [s.duration_s for s in states if s.duration_s]
    return sum(known) / len(known) if known else default_s


class SuiteLock:
    """One runner per outputs folder. A lock left by a dead process (same host) is cleared."""

    def __init__(self, folder: Path):
        self.path = folder / ".nwor.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and self._alive(holder):
                    raise LockHeld(f"another nwor runner (pid {holder['pid']} on {holder['host']}, since "
                                   f"{holder['since']}) is using {self.path.parent}; wait for it or stop it",
                                   lock=str(self.path)) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": _stamp()}, fh)
            return self
        raise LockHeld(f"could not take the lock {self.path}", lock=str(self.path))

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell for another host: respect the lock
        try:
            os.kill(int(holder["pid"]), 0)
        except (ProcessLookupError, ValueError, TypeError, KeyError):
            return False
        except PermissionError:
            return True
        return True


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class SuiteLog:
    """Timestamped START / SKIP / COMPLETE / ERROR lines, per grid and for the whole profile."""

    def __init__(self, profile_dir: Path, root=None):
        self.profile_dir, self.root = profile_dir, root

    def write(self, spec: RunSpec, event: str, detail: str = "") -> None:
        self._append(spec.grid, spec.run_id, event, detail, RunPaths.of(spec.profile, spec.grid, spec.run_id, self.root).grid_log)

    def _append(self, grid: str, run_id: str, event: str, detail: str, grid_log: Path) -> None:
        detail = re.sub(r"\s*\n\s*", " | ", detail.strip())  # one line per event, whatever the message
        line = f"[{_stamp()}] {event:<8} {grid}/{run_id}{(' ' + detail) if detail else ''}\n"
        for path in (self.profile_dir / MASTER_LOG, grid_log):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(line)

    def close_abandoned(self) -> None:
        """End each START that has no end line (its runner was killed) with ABANDONED; call holding the lock."""
        try:
            lines = (self.profile_dir / MASTER_LOG).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return
        open_runs: dict[str, None] = {}
        for line in lines:
            m = re.match(r"^\[[^\]]*\] (\S+)\s+(\S+/\S+)", line)
            if m and m.group(1) == "START":
                open_runs[m.group(2)] = None
            elif m:
                open_runs.pop(m.group(2), None)
        for key in open_runs:
            grid, run_id = key.split("/", 1)
            self._append(grid, run_id, "ABANDONED", "its runner stopped before the run ended (killed?)",
                         RunPaths(self.profile_dir / grid, run_id).grid_log)


def _log_early_exit(log: SuiteLog, spec: RunSpec, result_path) -> None:
    """The fork's `Confidence early exit stats: ...` line for an early-exit run (nwor.plugin.stats_line)."""
    from nwor.plugin import line_for_result

    try:
        line = line_for_result(json.loads(Path(result_path).read_text()))
    except (OSError, ValueError):
        return  # the run's own status says what went wrong
    if line:
        log.write(spec, "STATS", line)


def preflight(specs: list[RunSpec]) -> dict[str, str]:
    """Runs that this vLLM build must refuse, with the one-line reason, found before any engine starts."""
    from nwor.features import detect_capability, plan_features

    cap = detect_capability()
    refused = {}
    for spec in specs:
        try:
            plan_features(spec, cap)
        except FeatureUnavailable as err:
            refused[spec.run_id] = str(err)
    return refused


def _run_one(spec: RunSpec, result_path: str, refusal: str | None, log: SuiteLog, root) -> None:
    if refusal:
        write_result(result_path, failure(spec, FeatureUnavailable(refusal), status="refused"))
        log.write(spec, "ERROR", f"refused: {refusal}")
        return
    log.write(spec, "START")
    started = time.monotonic()
    try:
        run_notebook(spec, root=root)
        log.write(spec, "COMPLETE", f"{time.monotonic() - started:.1f}s")
        _log_early_exit(log, spec, result_path)
    except (RunFailed, NworError) as err:
        log.write(spec, "ERROR", str(err))


def _stopped(err: OSError, spec: RunSpec, root, left: int) -> OutputsUnwritable:
    from nwor.files import describe_os_error

    recorded = "is recorded as failed" if run_state(spec, root).status == "failed" else \
        "could not be recorded as failed"
    where = describe_os_error(err, run_dir(spec.profile, spec.grid, root))
    return OutputsUnwritable(f"suite stopped: cannot write {where}; run {spec.grid}/{spec.run_id} "
                             f"{recorded}; {left} runs not attempted (free space or fix the folder, then run the "
                             f"same command to resume)", run_id=spec.run_id, path=err.filename)


def run_suite(specs: list[RunSpec], *, root=None, force: bool = False, progress=None,
              states: list[RunState] | None = None, executor: str = "local", ray_address: str | None = None,
              ray_local_cpus: int | None = None) -> list[RunState]:
    """Execute every run that is not done (or all, with force), each in a fresh kernel; never stop on failure.

    `progress(event, state, index, total)` is called around each run for the CLI's display. `states`: the
    runs' states as the caller just read them (`nwor run` shows them first), so each is read once; None
    reads them here. `executor` "ray" runs them as Ray tasks (nwor.ray_suite) on the cluster at
    `ray_address`, or a local one.

    Raises:
        LockHeld: another live runner holds the profile's outputs folder.
        ConfigError: executor "ray" without Ray installed, or its cluster unreachable.
        OutputsUnwritable: the outputs folder stopped taking writes (full, read-only); the suite stops.
    """
    profiles = {s.profile for s in specs}
    folder = profile_dir(profiles.pop() if len(profiles) == 1 else "", root)
    log = SuiteLog(folder, root)
    finished: list[RunState] = []
    with SuiteLock(folder):
        log.close_abandoned()
        if states is None:
            states = [run_state(s, root) for s in specs]
        todo = [st for st in states if force or st.status != "done"]
        for st in states:
            if st not in todo:
                log.write(st.spec, "SKIP", "done with the same parameters")
                finished.append(st)
        refused = preflight([st.spec for st in todo]) if todo else {}
        if executor == "ray" and todo:
            from nwor.ray_suite import run_on_ray

            return finished + run_on_ray(todo, refused, log, root, progress, address=ray_address,
                                         local_cpus=ray_local_cpus)
        for i, st in enumerate(todo):
            spec = st.spec
            if progress:
                progress("start", st, i, len(todo))
            try:
                _run_one(spec, st.result_path, refused.get(spec.run_id), log, root)
            except OSError as err:  # the outputs folder cannot take even a failure record: stop, saying why
                raise _stopped(err, spec, root, len(todo) - i - 1) from None
            done = run_state(spec, root)
            finished.append(done)
            if progress:
                progress("end", done, i, len(todo))
    return finished
