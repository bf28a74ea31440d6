"""Tests for nwor.profile: exact ncu argv, and failure paths run against a fake ncu executable.

There is no GPU here, so a small script stands in for ncu; it follows ncu's --log-file/-o options.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import pytest

from nwor import ncu_pass, profile
from nwor.errors import ConfigError, NcuNotAvailable, ProfilerError

needs_ncu_report = pytest.mark.skipif(importlib.util.find_spec("ncu_report") is None,
                                      reason="ncu_report not installed (pip install ncu-report)")
METRICS = ["dram__bytes_write.sum", "dram__bytes_read.sum", "gpu__time_duration.sum"]
WORKLOAD = ["python", "-m", "nwor.bench", "--spec", "s.json", "--out", "r.json"]

# The fake ncu: writes BEHAVIOUR's log lines to --log-file, then acts out BEHAVIOUR.
FAKE_NCU = r'''#!{python}
import os, shutil, signal, subprocess, sys, time
args = sys.argv[1:]
if args == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler")
    print("Copyright (c) 2018-2025 NVIDIA Corporation")
    print("Version 2025.3.1.0 (build 36398880) (public-release)")
    sys.exit(0)
if "--import" in args:
    with open({csv!r}) as handle:
        sys.stdout.write(handle.read())
    sys.exit(0)
log = args[args.index("--log-file") + 1]
report = args[args.index("-o") + 1] + ".ncu-rep"
behaviour = {behaviour!r}
with open(log, "w") as handle:
    handle.write("==PROF== Connected to process 575\n")
    if behaviour.startswith("perm"):
        handle.write("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU "
                     "Performance Counters on the target device 0.\n")
    if behaviour.startswith("error"):
        handle.write("==ERROR== Option profile-from-start is not supported during range replay\n")
    if behaviour == "empty":
        handle.write("==WARNING== No kernels were profiled.\n")
if behaviour in ("perm", "error"):
    sys.exit(1 if behaviour == "perm" else 9)
if behaviour in ("perm0", "error0"):
    sys.exit(0)  # ncu returns the workload's status even when it could not profile
if behaviour == "hang":
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    with open({pids!r}, "w") as handle:
        handle.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(120)
if behaviour.startswith("copy:"):
    shutil.copy(behaviour[5:], report)
sys.exit(0)
'''


def _fake_ncu(tmp_path: Path, behaviour: str, csv: Path | None = None) -> tuple[str, str]:
    path = tmp_path / "ncu"
    path.write_text(FAKE_NCU.format(python=sys.executable, behaviour=behaviour, csv=str(csv),
                                    pids=str(tmp_path / "pids")))
    path.chmod(0o755)
    return str(path), "2025.3.1.0"


def _run(tmp_path: Path, ncu: tuple[str, str], **kwargs):
    options = dict(metrics=METRICS, report_path=tmp_path / "run.ncu-rep", log_path=tmp_path / "run.ncu.log",
                   timeout_s=30, ncu=ncu)
    options.update(kwargs)
    return profile.profile_workload(WORKLOAD, **options)


def test_argv_app_range():
    argv = profile.ncu_argv(WORKLOAD, metrics=METRICS, report_path="/o/run.ncu-rep", log_path="/o/run.ncu.log")
    assert argv == [
        "ncu", "--target-processes", "all", "--replay-mode", "app-range",
        "--cache-control", "all", "--clock-control", "none",
        "--metrics", "dram__bytes_write.sum,dram__bytes_read.sum,gpu__time_duration.sum",
        "--log-file", "/o/run.ncu.log", "-f", "-o", "/o/run", *WORKLOAD]
    assert "--profile-from-start" not in argv  # ncu rejects it in range replay modes


def test_argv_kernel_profiler_window():
    argv = profile.ncu_argv(WORKLOAD, metrics=METRICS[:1], report_path=Path("/o/run"), log_path=Path("/o/l.log"),
                            replay_mode="kernel", cache_control="none", clock_control="base", ncu="/cuda/bin/ncu")
    assert argv == [
        "/cuda/bin/ncu", "--target-processes", "all", "--replay-mode", "kernel", "--profile-from-start", "off",
        "--cache-control", "none", "--clock-control", "base", "--metrics", "dram__bytes_write.sum",
        "--log-file", "/o/l.log", "-f", "-o", "/o/run", *WORKLOAD]


def test_argv_kernel_nvtx_filter():
    argv = profile.ncu_argv(WORKLOAD, metrics=METRICS[:1], report_path="r", log_path="l",
                            replay_mode="kernel", nvtx_include="measure/")
    assert argv[:11] == ["ncu", "--target-processes", "all", "--replay-mode", "kernel",
                         "--nvtx", "--nvtx-include", "measure/", "--cache-control", "all", "--clock-control"]
    assert "--profile-from-start" not in argv


@pytest.mark.parametrize("option", [{"replay_mode": "range"}, {"cache_control": "some"},
                                    {"clock_control": "boost"}, {"metrics": []}])
def test_argv_rejects_bad_options(option):
    kwargs = dict(metrics=METRICS, report_path="r", log_path="l")
    kwargs.update(option)
    with pytest.raises(ConfigError):
        profile.ncu_argv(WORKLOAD, **kwargs)


def test_find_ncu_missing_binary():
    with pytest.raises(NcuNotAvailable, match="ncu not found"):
        profile.find_ncu("/nonexistent/ncu")


def test_find_ncu_reads_version_and_needs_gpu(tmp_path, monkeypatch):
    path, _ = _fake_ncu(tmp_path, "ok")
    monkeypatch.setattr(profile, "_gpu_present", lambda: True)
    assert profile.find_ncu(path) == (path, "2025.3.1.0")
    monkeypatch.setattr(profile, "_gpu_present", lambda: False)
    with pytest.raises(NcuNotAvailable, match="no NVIDIA GPU"):
        profile.find_ncu(path)


def _gone(pid: int) -> bool:
    # A zombie (reparented, not yet reaped) runs no code any more: count it as gone.
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def test_timeout_kills_process_group(tmp_path):
    ncu = _fake_ncu(tmp_path, "hang")
    started = time.perf_counter()
    with pytest.raises(ProfilerError, match="timed out") as info:
        _run(tmp_path, ncu, timeout_s=1.5, kill_grace_s=0.5)
    assert time.perf_counter() - started < 10
    leader, child = (int(p) for p in (tmp_path / "pids").read_text().split())
    deadline = time.monotonic() + 5
    while not (_gone(leader) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(leader) and _gone(child), "the workload's child (it ignores SIGTERM) survived"
    assert "Connected to process" in info.value.context["tail"]
    assert info.value.context["log_path"] == str(tmp_path / "run.ncu.log")
    assert pickle.loads(pickle.dumps(info.value)).context["tail"] == info.value.context["tail"]


@pytest.mark.parametrize("behaviour", ["perm", "perm0"])
def test_permission_error_names_the_fix(tmp_path, behaviour):
    with pytest.raises(ProfilerError) as info:
        _run(tmp_path, _fake_ncu(tmp_path, behaviour))
    message = str(info.value)
    assert "NVreg_RestrictProfilingToAdminUsers=0" in message and "root" in message and "modprobe" in message


def test_nonzero_exit_carries_error_lines(tmp_path):
    with pytest.raises(ProfilerError, match="exited 9") as info:
        _run(tmp_path, _fake_ncu(tmp_path, "error"))
    assert info.value.context["errors"] == [
        "==ERROR== Option profile-from-start is not supported during range replay"]
    assert info.value.context["returncode"] == 9


def test_error_lines_fail_even_with_exit_zero(tmp_path):
    with pytest.raises(ProfilerError, match="exited 0.*profile-from-start"):
        _run(tmp_path, _fake_ncu(tmp_path, "error0"))


def test_empty_region_without_report(tmp_path):
    # A stale report from an earlier attempt must not be read as this pass's result.
    (tmp_path / "run.ncu-rep").write_text("stale")
    with pytest.raises(ProfilerError, match="empty scoped region") as info:
        _run(tmp_path, _fake_ncu(tmp_path, "empty"))
    assert "No kernels were profiled" in info.value.context["tail"]


def test_empty_region_with_empty_report(tmp_path, monkeypatch):
    empty = tmp_path / "empty.csv"
    empty.write_text('"ID","Process ID","Kernel Name","dram__bytes_write.sum","dram__bytes_read.sum",'
                     '"gpu__time_duration.sum"\n"","","","byte","byte","ns"\n')
    monkeypatch.setitem(sys.modules, "ncu_report", None)  # force the CSV export path
    src = tmp_path / "src.ncu-rep"
    src.write_text("report")
    with pytest.raises(ProfilerError, match="empty scoped region"):
        _run(tmp_path, _fake_ncu(tmp_path, f"copy:{src}", csv=empty))


@needs_ncu_report
def test_app_range_record(tmp_path, ncu_fixtures):
    ncu = _fake_ncu(tmp_path, f"copy:{ncu_fixtures / 'h100_probe_app_range.ncu-rep'}")
    record = _run(tmp_path, ncu)
    assert record["status"] == "ok" and record["reader"] == "ncu_report"
    assert record["command"] == profile.ncu_argv(WORKLOAD, metrics=METRICS, report_path=tmp_path / "run.ncu-rep",
                                                 log_path=tmp_path / "run.ncu.log", ncu=ncu[0])
    assert record["num_ranges"] == 1 and record["num_kernels"] is None
    assert record["totals"] == {"dram__bytes_read.sum": 1_736_831_232, "dram__bytes_write.sum": 565_590_784,
                                "gpu__time_duration.sum": 98_316_704}
    assert record["units"]["dram__bytes_read.sum"] == "byte"
    assert record["top_kernels"] is None and record["split"] is None and record["split_reason"]
    assert set(record) == set(profile.RECORD_KEYS)


def test_kernel_record_through_csv_fallback(tmp_path, monkeypatch, ncu_fixtures):
    monkeypatch.setitem(sys.modules, "ncu_report", None)
    ncu = _fake_ncu(tmp_path, f"copy:{ncu_fixtures / 'h100_probe_kernel_replay.ncu-rep'}",
                    csv=ncu_fixtures / "h100_profiler_range_raw.csv")
    record = _run(tmp_path, ncu, replay_mode="kernel")
    assert record["reader"] == "csv" and record["num_kernels"] == 5
    assert record["totals"]["dram__bytes_read.sum"] == 1_608_393_472
    assert record["top_kernels"][0]["kernel"] == "nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_NNT"
    assert record["split"] is None and "one process" in record["split_reason"]
    # The processes ncu attached to (its log) and profiled (the export's Process ID), ranks added by ncu_pass.
    processes = record["processes"]
    assert processes["num_connected"] == 1 and processes["num_profiled"] == 1
    assert processes["processes"][0]["pid"] == 575 and processes["processes"][0]["results"] == 5
    assert processes["processes"][0]["totals"] == record["totals"]


@needs_ncu_report
def test_ncu_report_reader_gets_process_ids_from_the_csv_export(tmp_path, ncu_fixtures):
    # ncu_report has no process ids: the pass exports the CSV (the fake's --import prints a real export).
    ncu = _fake_ncu(tmp_path, f"copy:{ncu_fixtures / 'h100_probe_app_range.ncu-rep'}",
                    csv=ncu_fixtures / "h100_child_process_raw.csv")
    record = _run(tmp_path, ncu)
    assert record["reader"] == "ncu_report" and record["num_ranges"] == 1
    assert [(p["pid"], p["results"]) for p in record["processes"]["processes"]] == [(575, 0), (632, 5)]
    assert record["processes"]["num_profiled"] == 1 and record["processes"]["reason"] is None
    # An export that fails loses the per-process split only, and says why.
    failing = _run(tmp_path, _fake_ncu(tmp_path, f"copy:{ncu_fixtures / 'h100_probe_app_range.ncu-rep'}"))
    assert failing["status"] == "ok" and failing["processes"]["num_profiled"] is None
    assert failing["processes"]["reason"].startswith("no per-process split: ncu CSV export exited")


def test_unavailable_record():
    record = profile.unavailable_record("ncu not found: no 'ncu' on PATH")
    assert record["status"] == "unavailable" and record["reason"] == "ncu not found: no 'ncu' on PATH"
    assert set(record) == set(profile.RECORD_KEYS) and record["totals"] is None


@pytest.mark.skipif(shutil.which("ncu") is not None or os.path.exists("/dev/nvidia0"),
                    reason="this machine has ncu or a GPU")
def test_find_ncu_here_is_unavailable():
    with pytest.raises(NcuNotAvailable):
        profile.find_ncu()


def test_argv_kernel_name_filter_records_nvtx():
    argv = profile.ncu_argv(WORKLOAD, metrics=METRICS, report_path="r", log_path="r.log", replay_mode="kernel",
                            kernel_name="regex:reshape_and_cache", nvtx=True)
    i = argv.index("--nvtx")
    assert argv[i:i + 3] == ["--nvtx", "--profile-from-start", "off"]
    assert argv[argv.index("--kernel-name") + 1] == "regex:reshape_and_cache"
    assert "--nvtx-include" not in argv  # ranges recorded per kernel, not used as a filter


# A kernel-replay raw export of the KV-write sub-pass: two target writes outside any range, three inside
# nwor's drafter range (one nested under another range name).
_NVTX = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
_KV_METRICS = ["dram__bytes_write.sum", "dram__bytes_read.sum",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed", "gpu__time_duration.sum",
               "lts__t_sectors_op_write.sum"]


def _kv_csv(path: Path) -> Path:
    header = ["ID", "Process ID", "Process Name", "Host Name", _NVTX, "Kernel Name", "Context", "Stream",
              "Block Size", "Grid Size", "Device", "CC"] + _KV_METRICS
    units = [""] * 12 + ["byte", "byte", "%", "ns", "sector"]
    rows = []
    for i, nvtx in enumerate(["", '700  "<default domain>:nwor_drafter:none:none:none:none:none:none" ', "",
                              '700  "<default domain>:nwor_drafter:none:none:none:none:none:none" ',
                              '700  "<default domain>:step:none:none:none:none:none:none" '
                              '"<default domain>:nwor_drafter:none:none:none:none:none:none" ']):
        rows.append([str(i), "700", "python3", "h", nvtx, "reshape_and_cache_flash_kernel", "1", "7", "(128, 1, 1)",
                     "(36, 1, 1)", "0", "9.0", "1,000", "2,000", "1.5", "3,000", str(128 * (i + 1))])
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        writer.writerows([header, units] + rows)
    return path


def test_kv_write_pass_tells_drafter_from_target(tmp_path, monkeypatch):
    from nwor import ncu_pass

    monkeypatch.setitem(sys.modules, "ncu_report", None)  # the CSV export path reads the fake's --import
    dummy = tmp_path / "any.ncu-rep"
    dummy.write_text("not read: the CSV export stands for it")
    ncu = _fake_ncu(tmp_path, f"copy:{dummy}", csv=_kv_csv(tmp_path / "kv.csv"))
    record = _run(tmp_path, ncu, metrics=_KV_METRICS, replay_mode="kernel", kernel_name=ncu_pass.KV_KERNEL_FILTER,
                  nvtx=True)
    assert record["split"]["by"] == "nvtx_range"
    assert set(record["split"]["groups"]) == {"nwor_drafter", "step/nwor_drafter", profile.NO_RANGE}
    kv = ncu_pass.kv_summary(record)
    assert kv["status"] == "ok" and kv["split_by"] == "nvtx:nwor_drafter" and set(kv) == set(ncu_pass.KV_KEYS)
    assert kv["num_kernels"] == 5 and kv["bytes_written"] == 32 * 128 * (1 + 2 + 3 + 4 + 5)
    assert kv["drafter"] == {"num_kernels": 3, "bytes_written": 32 * 128 * (2 + 4 + 5),
                             "dram_bytes_written": 3000.0, "gpu_time_ns": 9000.0}
    assert kv["target"]["num_kernels"] == 2 and kv["target"]["bytes_written"] == 32 * 128 * (1 + 3)
    seed = ncu_pass.seed_ncu_metrics({"status": "ok", "totals": {"dram__bytes_write.sum": 7.0},
                                      "kv_cache_writes": kv})
    assert seed == {"dram__bytes_write.sum": 7.0, "kv_cache_write_bytes": kv["bytes_written"],
                    "kv_cache_write_bytes_drafter": kv["drafter"]["bytes_written"],
                    "kv_cache_write_bytes_target": kv["target"]["bytes_written"]}


def test_kv_summary_without_the_drafter_range_and_when_failed():
    from nwor import ncu_pass

    record = {**profile.unavailable_record("x"), "status": "ok", "replay_mode": "kernel", "num_kernels": 2,
              "totals": {"lts__t_sectors_op_write.sum": 10.0}, "split": None}
    kv = ncu_pass.kv_summary(record)
    assert kv["bytes_written"] == 320.0 and kv["drafter"] is None and kv["split_by"] is None and kv["reason"]
    failed = ncu_pass.kv_summary({**profile.unavailable_record("ncu timed out"), "status": "failed", "tail": "t"})
    assert failed["status"] == "failed" and failed["reason"] == "ncu timed out" and failed["tail"] == "t"
    assert ncu_pass.seed_ncu_metrics({"status": "failed", "kv_cache_writes": failed}) is None


@needs_ncu_report
def test_ncu_pass_writes_its_summary_beside_a_dotted_run_id(tmp_path, ncu_fixtures):
    from nwor import ncu_pass

    paths = ncu_pass.side_paths(tmp_path / "run3_r36_t128_temp0.0_thresh0.5.json")
    shutil.copy(ncu_fixtures / "h100_probe_app_range.ncu-rep", paths.report)
    assert ncu_pass.write_summary(paths) == (str(tmp_path / "run3_r36_t128_temp0.0_thresh0.5.ncu-summary.txt"), None)
    assert "1,736,831,232 byte" in paths.summary.read_text()
    paths.report.unlink()
    where, why = ncu_pass.write_summary(paths)  # no report: no summary, and the reason instead
    assert where is None and why


def test_kv_sub_pass_cuts_the_workload_to_one_short_batch():
    from nwor.grid import expand, load_profile
    spec = next(s for s in expand("early_exit_grid", load_profile("gpu-smoke")) if s.confidence_threshold == 0.5)
    sub = ncu_pass.kv_sub_spec(spec)
    assert (sub.measured_batches, sub.max_new_tokens) == (1, ncu_pass.KV_MAX_NEW_TOKENS)
    assert (sub.num_requests, sub.confidence_threshold, sub.run_id) == (spec.num_requests, 0.5, spec.run_id)
    short = ncu_pass.kv_sub_spec(dataclasses.replace(spec, max_new_tokens=16))
    assert short.max_new_tokens == 16  # never longer than the run's own batches
