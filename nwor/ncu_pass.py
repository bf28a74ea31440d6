"""A run's Nsight Compute pass: the same workload as a separate `python -m nwor.bench` process under ncu."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from nwor import ncu_processes, ncu_read, profile
from nwor.config import RunSpec
from nwor.engine import release_kept
from nwor.errors import NcuNotAvailable, ProfilerError
from nwor.files import atomic_write_text
from nwor.ncu_metrics import DRAM_PCT, DRAM_WRITE, GPU_TIME, KV_WRITE_METRICS, LTS_WRITE_SECTORS, SECTOR_BYTES, with_required
from nwor.paths import NcuPaths, RunPaths
from nwor.plugin import nvtx
from nwor.results import read_result, seed_summary

# Clock control "none": the GPU runs at the clocks a deployment sees; locking to base clocks would
# understate throughput. DRAM byte counts, the quantity studied, do not depend on clocks.
CLOCK_CONTROL = "none"
# Range replay measures the whole region in one pass, so there is no per-kernel cache flush to undo.
CACHE_CONTROL = "all"
# The KV-cache write sub-pass: kernel replay of vLLM's KV writers only (reshape_and_cache,
# reshape_and_cache_flash, ...), over the first measured batch(es), each kernel tagged with the NVTX range
# nwor puts around the drafter's propose (nwor/plugin/nvtx.py).
KV_KERNEL_FILTER = "regex:reshape_and_cache"
KV_BATCHES = 1
# Kernel replay costs ~0.27 s per KV writer on an H100 (measured 2026-11-27): one 36 x 128-token batch of the
# 8B-shaped target launches ~3,500 writers (32 target layers + 10 drafter positions a step), over 15 min. The
# sub-pass therefore generates at most 32 tokens a request (~900 writers, ~4 min); its window counters
# (tokens stopped, checks) are that batch's own, so the bytes cross-check still holds.
KV_MAX_NEW_TOKENS = 32
# At tensor parallel > 1 the app-range window pass hung (two H200s, 2026-11-28:
# outputs/gpu-h100-protocol/session11/ncu-tp2-incomplete/): each rank's range holds all-reduces with the other,
# and under ncu's replay the ranks did not get through the range together, so the pass sat out its whole
# ncu_timeout_s (900 s) and measured nothing. Such a window pass is not started; its record says why. The KV
# sub-pass (kernel replay of the KV writers only, no collectives) profiled both ranks and still runs.
TP_WINDOW_SKIP = ("window pass not run: app-range replay hung at tensor parallel 2 (each rank's range waits on "
                  "the other's all-reduces under ncu's replay; docs/ncu.md, \"Tensor parallel\")")


def side_paths(result_path: str | Path, tag: str = "ncu") -> NcuPaths:
    """Files of an ncu pass next to the run's JSON (`nwor.paths.RunPaths.ncu`)."""
    return RunPaths.from_result(result_path).ncu(tag)


def workload_argv(spec: RunSpec, spec_path: Path, paths: NcuPaths) -> list[str]:
    return [sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(paths.pass_result),
            "--log", str(paths.vllm_log), "--profile-region"]


def run_ncu_pass(spec: RunSpec, result_path: str | Path) -> dict:
    """Profile the run's measured batches under ncu and return the `ncu` block for its result.

    Two passes: the whole measured window (`spec.ncu_replay_mode`, the project's metric list plus the run's
    own) and, for EAGLE runs, the KV-cache write sub-pass (`kv_cache_writes`). A machine without ncu or a
    GPU gets a record with status "unavailable"; a failed or timed-out pass gets status "failed" with the
    log's last lines; a window pass known to hang (`window_skip_reason`) gets status "skipped". None stops the run.
    """
    if not spec.ncu:
        return {"status": "off", "reason": "ncu not requested for this run"}
    try:
        ncu = profile.find_ncu()  # (path, version)
    except NcuNotAvailable as err:
        return {**profile.unavailable_record(str(err)), "kv_cache_writes": kv_unavailable(str(err))}
    release_kept()  # a profiled pass starts its own engine: one that measure() left running must not hold the device
    skip = window_skip_reason(spec)
    record = ({**profile.unavailable_record(skip), "status": "skipped"} if skip else
              _pass(spec, side_paths(result_path), ncu, metrics=with_required(spec.ncu_metrics),
                    replay_mode=spec.ncu_replay_mode))
    if spec.method == "eagle":
        kv = _pass(kv_sub_spec(spec), side_paths(result_path, "ncu-kv"), ncu, metrics=KV_WRITE_METRICS,
                   replay_mode="kernel", kernel_name=KV_KERNEL_FILTER, nvtx=True, env={**os.environ, nvtx.ENV_VAR: "1"})
        record["kv_cache_writes"] = kv_summary(kv)
    else:
        record["kv_cache_writes"] = kv_unavailable(f"method {spec.method!r} has no drafter KV cache", status="off")
    return record


def window_skip_reason(spec: RunSpec) -> str | None:
    """Why the run's window pass is not started (`TP_WINDOW_SKIP`), or None when it runs."""
    if spec.tensor_parallel_size > 1 and spec.ncu_replay_mode == "app-range":
        return TP_WINDOW_SKIP
    return None


def kv_sub_spec(spec: RunSpec) -> RunSpec:
    """The KV-write sub-pass's workload: the run's, cut to `KV_BATCHES` batch of at most `KV_MAX_NEW_TOKENS`."""
    return dataclasses.replace(spec, measured_batches=min(spec.measured_batches, KV_BATCHES),
                               max_new_tokens=min(spec.max_new_tokens, KV_MAX_NEW_TOKENS))


def _pass(spec: RunSpec, paths: NcuPaths, ncu: tuple[str, str], **options) -> dict:
    paths.report.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        # The profiled pass is one engine, one arm: ncu measures the run itself, not its comparison design.
        json.dump({**spec.to_dict(), "arms": [], "engine_instances": 1}, fh)
        spec_path = Path(fh.name)
    try:
        record = profile.profile_workload(
            workload_argv(spec, spec_path, paths), report_path=paths.report, log_path=paths.log,
            timeout_s=spec.ncu_timeout_s, cache_control=CACHE_CONTROL, clock_control=CLOCK_CONTROL, ncu=ncu,
            **options)
    except ProfilerError as err:
        failed = profile.unavailable_record(str(err))
        failed.update(status="failed", log_path=str(paths.log), tail=err.context.get("tail"))
        return failed
    finally:
        spec_path.unlink(missing_ok=True)
    profiled = read_result(paths.pass_result) if paths.pass_result.exists() else None
    record["processes"] = ncu_processes.with_ranks(record.get("processes"), spec.tensor_parallel_size,
                                                   _tp_ranks(paths, profiled))
    record["summary_path"], record["summary_error"] = write_summary(paths, record["processes"])
    if profiled is not None:
        record["profiled_pass"] = {"result_path": str(paths.pass_result),
                                   "mean_latency_s": profiled["metrics"]["mean_latency_s"],
                                   "num_draft_tokens": profiled["metrics"]["num_draft_tokens"],
                                   "measured_batches": spec.measured_batches,
                                   "max_new_tokens": spec.max_new_tokens,
                                   # The early-exit counters of this pass's own window, to check bytes against.
                                   "tokens_stopped": (profiled.get("early_exit") or {}).get("tokens_stopped"),
                                   "checks": (profiled.get("early_exit") or {}).get("checks")}
    return record


def _tp_ranks(paths: NcuPaths, profiled: dict | None) -> dict[int, int]:
    """pid -> tensor-parallel rank of the profiled pass: its vLLM log, and its plugin's ranks when loaded."""
    text = paths.vllm_log.read_text(errors="replace") if paths.vllm_log.exists() else ""
    return {**ncu_processes.tp_ranks_from_log(text), **ncu_processes.tp_ranks_from_result(profiled)}


def write_summary(paths: NcuPaths, processes: dict | None = None) -> tuple[str | None, str | None]:
    """`nwor ncu summarize` of the pass's report, kept beside it (readable without ncu_report), with the
    per-process lines of the record's `processes` block when given.

    Returns:
        (summary path, None), or (None, why not) when the report cannot be summarized.
    """
    try:
        text = ncu_read.summarize(paths.report)
    except ProfilerError as err:
        return None, str(err)
    lines = ncu_processes.summary_lines(processes)
    atomic_write_text(paths.summary, "\n".join([text, *lines]) + "\n")
    return str(paths.summary), None


# Keys of the `kv_cache_writes` block (docs/ncu.md), so every status has the same shape.
KV_KEYS = ("status", "reason", "kernel_filter", "replay_mode", "window", "num_kernels", "bytes_written",
           "dram_bytes_written", "drafter", "target", "split_by", "report_path", "log_path", "tail", "processes")
_SIDE_KEYS = ("num_kernels", "bytes_written", "dram_bytes_written", "gpu_time_ns")


def kv_unavailable(reason: str, status: str = "unavailable") -> dict:
    return {**dict.fromkeys(KV_KEYS), "status": status, "reason": reason, "kernel_filter": KV_KERNEL_FILTER}


def _side(totals: dict | None) -> dict:
    """Bytes written (L2 write sectors x 32), DRAM bytes written and GPU time of one group of KV writers."""
    totals = totals or {}
    sectors = totals.get(LTS_WRITE_SECTORS)
    return {"num_kernels": totals.get("num_kernels"),
            "bytes_written": None if sectors is None else sectors * SECTOR_BYTES,
            "dram_bytes_written": totals.get(DRAM_WRITE),
            "gpu_time_ns": totals.get(GPU_TIME)}


def kv_summary(record: dict) -> dict:
    """The `kv_cache_writes` block from the sub-pass's ncu record: all KV writers, the drafter's, the target's.

    Drafter = kernels inside nwor's `nwor_drafter` NVTX range; target = every other KV writer. Without the
    range in the report (no CUDA NVTX, or an engine that never ran the wrapper) both sides are null and
    `split_by` says why.
    """
    if record.get("status") != "ok":
        out = kv_unavailable(record.get("reason") or "KV-write pass did not run", status=record.get("status"))
        out.update(log_path=record.get("log_path"), tail=record.get("tail"))
        return out
    everything = _side({**(record.get("totals") or {}), "num_kernels": record.get("num_kernels")})
    out = {**dict.fromkeys(KV_KEYS), "status": "ok", "kernel_filter": KV_KERNEL_FILTER,
           "replay_mode": record.get("replay_mode"), "window": record.get("profiled_pass"),
           "num_kernels": everything["num_kernels"], "bytes_written": everything["bytes_written"],
           "dram_bytes_written": everything["dram_bytes_written"],
           "report_path": record.get("report_path"), "log_path": record.get("log_path"),
           "processes": record.get("processes")}
    split = record.get("split") or {}
    groups = split.get("groups") or {} if split.get("by") == "nvtx_range" else {}
    drafter = [g for name, g in groups.items() if nvtx.RANGE in name.split("/")]
    if not drafter:
        out["split_by"] = None
        out["reason"] = f"no kernel ran inside the {nvtx.RANGE!r} NVTX range; drafter and target not told apart"
        return out
    target = [g for name, g in groups.items() if nvtx.RANGE not in name.split("/")]
    out["split_by"] = f"nvtx:{nvtx.RANGE}"
    out["drafter"], out["target"] = (_side(_add(g)) if g else _side({"num_kernels": 0}) for g in (drafter, target))
    return out


def _add(groups: list[dict]) -> dict:
    total: dict = {}
    for group in groups:
        for key, value in group.items():
            if value is not None and key != DRAM_PCT:  # a sum of percentages means nothing
                total[key] = total.get(key, 0) + value
    return total


def seed_ncu_metrics(record: dict) -> dict | None:
    """`.summary.per_mode[0].ncu_metrics`: the window totals plus the KV-write bytes (docs/ncu.md)."""
    totals = record.get("totals") if record.get("status") == "ok" else None
    kv = record.get("kv_cache_writes") or {}
    if totals is None and kv.get("status") != "ok":
        return None
    ok = kv.get("status") == "ok"
    return {**(totals or {}),
            "kv_cache_write_bytes": kv.get("bytes_written") if ok else None,
            "kv_cache_write_bytes_drafter": (kv.get("drafter") or {}).get("bytes_written") if ok else None,
            "kv_cache_write_bytes_target": (kv.get("target") or {}).get("bytes_written") if ok else None}


def attach(doc: dict, spec: RunSpec, record: dict) -> dict:
    """The run's result with the ncu block and the seed's `ncu_metrics` path filled in."""
    return {**doc, "ncu": record, "summary": seed_summary(spec, doc["metrics"], seed_ncu_metrics(record))}
