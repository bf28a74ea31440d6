"""Build and run the Nsight Compute (ncu) command for one run's profiling pass.

Region totals come from app-range replay; per-kernel replay is kept for short sub-windows.
"""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from nwor import ncu_processes, ncu_read
from nwor.errors import NcuNotAvailable, ProfilerError
from nwor.ncu_argv import ncu_argv
from nwor.ncu_metrics import DRAM_WRITE

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
PERMISSION_FIX = (
    "ncu has no permission to read GPU performance counters (ERR_NVGPUCTRPERM): run as root, or set "
    "'options nvidia NVreg_RestrictProfilingToAdminUsers=0' in /etc/modprobe.d/ and reload the nvidia "
    "module (modprobe -r nvidia && modprobe nvidia, or reboot); "
    "see https://developer.nvidia.com/ERR_NVGPUCTRPERM"
)
_VERSION_RE = re.compile(r"Version\s+(\S+)")
# Every key of the run's `ncu` block, so unavailable and ok records have the same shape.
RECORD_KEYS = ("status", "reason", "ncu_version", "command", "report_path", "log_path", "replay_mode",
               "cache_control", "clock_control", "nvtx_include", "metrics", "reader", "wall_s",
               "num_kernels", "num_ranges", "totals", "units", "top_kernels", "split", "split_reason",
               "processes")


def _gpu_present() -> bool:
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0


def find_ncu(binary: str = "ncu") -> tuple[str, str]:
    """Locate ncu and read its version, before any profiling starts.

    Args:
        binary: name or path of the ncu executable.

    Returns:
        ``(path, version)``, e.g. ``("/usr/local/cuda/bin/ncu", "2025.3.1.0")``.

    Raises:
        NcuNotAvailable: the binary is missing, prints no version, or there is no NVIDIA GPU
            (neither /dev/nvidia0 nor a working nvidia-smi).
    """
    path = shutil.which(binary)
    if path is None:
        raise NcuNotAvailable(f"ncu not found: no '{binary}' on PATH", binary=binary)
    result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    match = _VERSION_RE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise NcuNotAvailable(f"{path} --version exited {result.returncode} without a version line",
                              binary=path, output=(result.stdout + result.stderr)[-500:])
    if not _gpu_present():
        raise NcuNotAvailable("no NVIDIA GPU: /dev/nvidia0 is absent and nvidia-smi -L fails or is missing",
                              binary=path)
    return path, match.group(1)


def _log_lines(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    return log_path.read_text(errors="replace").splitlines()


def _tail(lines: list[str]) -> str:
    return "\n".join(deque(lines, maxlen=LOG_TAIL_LINES))


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the whole process group (ncu, the workload and its children), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.info("ncu group %d ignored SIGTERM for %.1f s", proc.pid, grace_s)
    # Children may outlive the leader's exit; SIGKILL what is left of the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        logger.debug("ncu group %d already gone", proc.pid)
    proc.wait()


def _csv_export(report_path: Path, metrics: Sequence[str], ncu: str, log_path: Path,
                export_timeout_s: float) -> pd.DataFrame:
    argv = ncu_read.csv_export_argv(ncu, report_path)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=export_timeout_s)
    except subprocess.TimeoutExpired as err:
        raise ProfilerError(f"ncu CSV export timed out after {export_timeout_s} s",
                            log_path=str(log_path), command=argv) from err
    if result.returncode != 0:
        raise ProfilerError(f"ncu CSV export exited {result.returncode}: {result.stderr.strip()[-500:]}",
                            log_path=str(log_path), command=argv)
    return ncu_read.read_csv_export(io.StringIO(result.stdout), metrics)


def _read(report_path: Path, metrics: Sequence[str], ncu: str, log_path: Path,
          export_timeout_s: float) -> tuple[pd.DataFrame, str]:
    try:
        import ncu_report  # noqa: F401  (only probing whether the fast reader exists)
    except ImportError:
        return _csv_export(report_path, metrics, ncu, log_path, export_timeout_s), "csv"
    return ncu_read.read_report(report_path, metrics), "ncu_report"


def _processes(df, lines: list[str], report_path: Path, metrics, ncu: str, log_path: Path,
               export_timeout_s: float) -> dict:
    """The `processes` block (nwor.ncu_processes): `ncu_report` has no process ids, the CSV export has."""
    if df["Process"].notna().any():
        return ncu_processes.block(lines, df)
    try:
        by_process = _csv_export(report_path, metrics, ncu, log_path, export_timeout_s)
    except ProfilerError as err:  # the totals stand without it; only the per-process split is lost
        return ncu_processes.block(lines, None, reason=f"no per-process split: {err}")
    return ncu_processes.block(lines, by_process)


NO_RANGE = "(no nvtx range)"  # the group of kernels launched outside every NVTX range


def _split(df, replay_mode: str) -> tuple[dict | None, str | None]:
    """Totals (and kernel counts) per NVTX range or per process, when kernels can be told apart that way."""
    if replay_mode == "app-range":
        return None, "app-range replay measures the window as one range; kernels are not told apart"
    for column, label in (("Range", "nvtx_range"), ("Process", "process")):
        if column not in df or df[column].nunique(dropna=True) == 0:
            continue
        # Kernels outside every NVTX range are a group of their own (e.g. the target beside the drafter).
        keys = df[column].astype(object).fillna(NO_RANGE) if column == "Range" else df[column]
        if keys.nunique() > 1:
            groups = {str(key): {**ncu_read.totals(group), "num_kernels": ncu_read.count_results(group)}
                      for key, group in df.groupby(keys)}
            return {"by": label, "groups": groups}, None
    return None, "all kernels ran in one process with no distinguishing NVTX range"


def profile_workload(workload_argv: Sequence[str], *, metrics: Sequence[str], report_path: str | Path,
                     log_path: str | Path, timeout_s: float, replay_mode: str = "app-range",
                     cache_control: str = "all", clock_control: str = "none",
                     nvtx_include: str | None = None, export_timeout_s: float = 600.0,
                     kill_grace_s: float = 10.0, ncu: tuple[str, str] | None = None,
                     top_by: str = DRAM_WRITE, kernel_name: str | None = None, nvtx: bool = False,
                     env: dict | None = None) -> dict:
    """Run the workload under ncu and summarise the report for the run's JSON.

    Args:
        workload_argv: the command to profile; it opens the measured region itself.
        metrics: metric names to collect.
        report_path: the ``.ncu-rep`` path next to the run's JSON.
        log_path: ncu's log file next to the run's JSON.
        timeout_s: wall-clock limit for the whole ncu process group.
        replay_mode, cache_control, clock_control, nvtx_include: see ``ncu_argv``.
        export_timeout_s: limit for the CSV export used when ``ncu_report`` is not importable.
        kill_grace_s: time between SIGTERM and SIGKILL on timeout.
        ncu: ``(path, version)`` from ``find_ncu``; None calls it.
        top_by: metric that ranks ``top_kernels`` (kernel replay only).
        kernel_name, nvtx: see ``ncu_argv``.
        env: the environment of ncu and the workload (None: this process's).

    Returns:
        The ``ncu`` block of the run's JSON: status, ncu_version, command, report_path, log_path,
        replay_mode, cache_control, clock_control, wall_s, num_kernels or num_ranges, totals
        (base units), units, top_kernels, split (null with ``split_reason`` when not possible),
        processes (``nwor.ncu_processes.block``: the processes ncu connected to and profiled).

    Raises:
        NcuNotAvailable: no ncu or no GPU (from ``find_ncu``).
        ProfilerError: timeout (group killed; carries the log tail), non-zero exit or ERROR lines
            in the log (carries them; names the fix for ERR_NVGPUCTRPERM), missing metrics, or an
            empty scoped region.
    """
    ncu_path, version = ncu if ncu is not None else find_ncu()
    report_path, log_path = Path(report_path), Path(log_path)
    argv = ncu_argv(workload_argv, metrics=metrics, report_path=report_path, log_path=log_path,
                    replay_mode=replay_mode, cache_control=cache_control, clock_control=clock_control,
                    nvtx_include=nvtx_include, ncu=ncu_path, kernel_name=kernel_name, nvtx=nvtx)
    suffix = "" if report_path.suffix == ".ncu-rep" else ".ncu-rep"
    full_report = report_path.with_name(report_path.name + suffix)
    # ncu writes no report when nothing was profiled; a stale report or log from an earlier
    # attempt of this run would otherwise be read as this pass's result.
    full_report.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    logger.info("profiling: %s", argv)
    started = time.perf_counter()
    # A new session makes ncu the leader of its own process group, so a timeout can kill
    # ncu, the workload and the vLLM engine core together.
    proc = subprocess.Popen(argv, start_new_session=True, env=env)
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        _kill_group(proc, kill_grace_s)
        raise ProfilerError(f"ncu timed out after {timeout_s} s; process group killed; see {log_path}",
                            log_path=str(log_path), tail=_tail(_log_lines(log_path)), command=argv) from err
    except KeyboardInterrupt:
        # An interrupted suite must not leave ncu and a GPU-holding engine running.
        _kill_group(proc, kill_grace_s)
        raise
    wall_s = time.perf_counter() - started
    lines = _log_lines(log_path)
    # ncu can log a permission error, or fail to profile one kernel, and still exit with the
    # workload's status 0; totals would then silently miss kernels, so any ERROR line fails the pass.
    if any("ERR_NVGPUCTRPERM" in line for line in lines):
        raise ProfilerError(PERMISSION_FIX, log_path=str(log_path), returncode=returncode, command=argv)
    errors = [line for line in lines if "==ERROR==" in line]
    if returncode != 0 or errors:
        detail = " | ".join(errors) or "no ERROR lines"
        raise ProfilerError(f"ncu exited {returncode}; see {log_path}: {detail}",
                            log_path=str(log_path), returncode=returncode, errors=errors,
                            tail=_tail(lines), command=argv)
    if not full_report.exists():
        raise ProfilerError(f"empty scoped region: ncu wrote no report ({full_report}); see {log_path}",
                            log_path=str(log_path), tail=_tail(lines), command=argv)
    df, reader = _read(full_report, metrics, ncu_path, log_path, export_timeout_s)
    count = ncu_read.count_results(df)
    if count == 0:
        raise ProfilerError(f"empty scoped region: {full_report} holds no kernels or ranges",
                            log_path=str(log_path), command=argv)
    split, split_reason = _split(df, replay_mode)
    record = dict.fromkeys(RECORD_KEYS)
    record.update(
        status="ok", ncu_version=version, command=argv, report_path=str(full_report), log_path=str(log_path),
        replay_mode=replay_mode, cache_control=cache_control, clock_control=clock_control,
        nvtx_include=nvtx_include, metrics=list(metrics), reader=reader, wall_s=wall_s,
        totals=ncu_read.totals(df), units=ncu_read.units(df), split=split, split_reason=split_reason,
        top_kernels=ncu_read.top_kernels(df, by=top_by) if replay_mode == "kernel" else None,
        processes=_processes(df, lines, full_report, metrics, ncu_path, log_path, export_timeout_s),
    )
    record["num_ranges" if replay_mode == "app-range" else "num_kernels"] = count
    return record


def unavailable_record(reason: str) -> dict:
    """The ``ncu`` block for a run on a machine without ncu: status ``unavailable`` and the reason.

    Args:
        reason: the one-line reason, usually ``str(NcuNotAvailable)``.

    Returns:
        A dict with every key of an ok record, measurements null.
    """
    record = dict.fromkeys(RECORD_KEYS)
    record.update(status="unavailable", reason=reason)
    return record
