"""A run's Nsight Compute pass: the same workload as a separate `python -m nwor.bench` process under ncu."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from nwor import profile
from nwor.config import RunSpec
from nwor.errors import NcuNotAvailable, ProfilerError
from nwor.results import read_result, seed_summary

# Clock control "none": the GPU runs at the clocks a deployment sees; locking to base clocks would
# understate throughput. DRAM byte counts, the quantity studied, do not depend on clocks.
CLOCK_CONTROL = "none"
# Range replay measures the whole region in one pass, so there is no per-kernel cache flush to undo.
CACHE_CONTROL = "all"


def side_paths(result_path: str | Path) -> dict:
    """Files of the ncu pass, next to the run's JSON: report, ncu log, the pass's own result and vLLM log."""
    result_path = Path(result_path)
    stem = result_path.name.removesuffix(".json")  # not with_suffix: run ids hold dots (temp0.0)
    base = result_path.parent / stem
    return {"report": base.parent / f"{stem}.ncu-rep", "log": base.parent / f"{base.name}.ncu.log",
            "pass_result": base.parent / f"{base.name}.ncu-pass.json",
            "vllm_log": base.parent / f"{base.name}.ncu-pass.vllm.log"}


def workload_argv(spec: RunSpec, spec_path: Path, paths: dict) -> list[str]:
    return [sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(paths["pass_result"]),
            "--log", str(paths["vllm_log"]), "--profile-region"]


def run_ncu_pass(spec: RunSpec, result_path: str | Path) -> dict:
    """Profile the run's measured batches under ncu and return the `ncu` block for its result.

    A machine without ncu or a GPU gets a record with status "unavailable"; a failed or timed-out
    pass gets status "failed" with the log's last lines. Neither stops the run.
    """
    if not spec.ncu:
        return {"status": "off", "reason": "ncu not requested for this run"}
    try:
        ncu = profile.find_ncu()  # (path, version)
    except NcuNotAvailable as err:
        return profile.unavailable_record(str(err))
    paths = side_paths(result_path)
    paths["report"].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        # The profiled pass is one engine, one arm: ncu measures the run itself, not its comparison design.
        json.dump({**spec.to_dict(), "arms": [], "engine_instances": 1}, fh)
        spec_path = Path(fh.name)
    try:
        record = profile.profile_workload(
            workload_argv(spec, spec_path, paths), metrics=spec.ncu_metrics, report_path=paths["report"],
            log_path=paths["log"], timeout_s=spec.ncu_timeout_s, replay_mode=spec.ncu_replay_mode,
            cache_control=CACHE_CONTROL, clock_control=CLOCK_CONTROL, ncu=ncu)
    except ProfilerError as err:
        failed = profile.unavailable_record(str(err))
        failed.update(status="failed", log_path=str(paths["log"]), tail=err.context.get("tail"))
        return failed
    finally:
        spec_path.unlink(missing_ok=True)
    if paths["pass_result"].exists():
        profiled = read_result(paths["pass_result"])
        record["profiled_pass"] = {"result_path": str(paths["pass_result"]),
                                   "mean_latency_s": profiled["metrics"]["mean_latency_s"],
                                   "num_draft_tokens": profiled["metrics"]["num_draft_tokens"]}
    return record


def attach(doc: dict, spec: RunSpec, record: dict) -> dict:
    """The run's result with the ncu block and the seed's `ncu_metrics` path filled in."""
    totals = record.get("totals") if record.get("status") == "ok" else None
    return {**doc, "ncu": record, "summary": seed_summary(spec, doc["metrics"], totals)}
