"""Named views: the tables and summaries the report shows, so the notebook names them instead of listing columns.

Each view takes one frame of `nwor.analysis`, `nwor.compare` or `nwor.findings` and returns its columns in
reading order; a column a frame lacks (e.g. nothing was compared) shows as empty rather than failing.
"""
from __future__ import annotations

import pandas as pd

from nwor.analysis import first_present
from nwor.machines import machine_counts, mixed_machines_warning


def _ci(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high", f"{name}_verdict"]


def _view(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.reindex(columns=columns).reset_index(drop=True)


def runs(frames) -> pd.DataFrame:
    """One row per run, in grid order: status, reason, design and headline measurements."""
    columns = ["grid", "run_id", "label", "status", "reason", "design", "engine_instances", "arms", "warmup",
               "adaptive", "confidence_threshold", "temperature", "max_tokens", "n_batches", "latency_avg_s",
               "output_tokens_per_s", "spec_num_draft_tokens", "draft_acceptance_rate", "dram_bytes_write",
               "stop_pct", "feature_impl", "vllm"]
    return _view(frames.runs.sort_values(["grid", "run_id"]), columns)


def not_measured(frames) -> pd.DataFrame:
    """Runs that are not `ok` (failed, refused, missing, unreadable), with the reason."""
    return _view(frames.runs[frames.runs.status != "ok"].sort_values(["grid", "run_id"]),
                 ["grid", "run_id", "status", "reason"])


def calibration(aa: pd.DataFrame) -> pd.DataFrame:
    """The A/A comparisons: design, instances, method, latency and throughput change with intervals."""
    return _view(aa, ["run_id", "design", "arm", "reference_arm", "instances", "method",
                      *_ci("latency_change_pct"), *_ci("throughput_change_pct")])


def adaptive_latency(adaptive: pd.DataFrame) -> pd.DataFrame:
    """Adaptive on vs off per workload: how it was compared, and latency and throughput with verdicts."""
    return _view(adaptive, ["label", "status", "reason", "comparison", "design", "instances",
                            *_ci("latency_reduction_pct"), *_ci("throughput_improvement_pct"), "calibration"])


def adaptive_draft_tokens(adaptive: pd.DataFrame) -> pd.DataFrame:
    """Draft tokens and acceptance rate of adaptive off and on per workload (one counter per run)."""
    return _view(adaptive, ["label", "status", "baseline_spec_num_draft_tokens", "treatment_spec_num_draft_tokens",
                            "draft_token_reduction_pct", "baseline_draft_acceptance_rate",
                            "treatment_draft_acceptance_rate"])


def early_exit(early_exit: pd.DataFrame) -> pd.DataFrame:
    """Early-exit runs: pairing, DRAM writes, tokens stopped, drafter KV writes, latency overhead and its verdict."""
    return _view(early_exit, ["label", "confidence_threshold", "role", "status", "comparison", "design", "instances",
                              "pair_status", "pair_reason", "dram_bytes_write", "dram_write_reduction_pct",
                              "dram_reason", "stop_pct", "kv_drafter_bytes", "kv_drafter_write_reduction_pct",
                              "kv_drafter_write_reduction_per_draft_token_pct", "kv_saved_bytes_per_stopped_token",
                              "kv_reason", *_ci("latency_overhead_pct"), "calibration"])


def arms(arms: pd.DataFrame) -> pd.DataFrame:
    """Arms compared with a reference arm in one run (e.g. the plugin's overhead against stock vLLM)."""
    return _view(arms, ["grid", "run_id", "arm", "reference_arm", "design", "instances", "method",
                        *_ci("latency_overhead_pct"), *_ci("throughput_change_pct"), "calibration"])


def skipped(frames) -> pd.DataFrame:
    """Result files that could not be read, and why (they are left out of every comparison)."""
    return frames.skipped


def _interval(row, name: str) -> str:
    value, low, high = (getattr(row, f"{name}{s}") for s in ("", "_ci_low", "_ci_high"))
    if pd.isna(value):
        return "n/a"
    return f"{value:+.1f}%" + ("" if pd.isna(low) else f" (95% CI {low:+.1f} to {high:+.1f})")


def run_summary(frames) -> str:
    """One Markdown line: how many runs were measured, a loud warning when none was, and one when the runs come
    from more than one machine."""
    runs = frames.runs
    counts = ", ".join(f"{n} {status}" for status, n in runs.status.value_counts().items())
    ok = int((runs.status == "ok").sum())
    if ok == 0:
        return (f"**No run was measured** ({counts}): every table below lists the runs with their reasons, and "
                "no comparison has data.")
    skipped = (f" {len(frames.skipped)} result file(s) could not be read and are listed below."
               if len(frames.skipped) else "")
    mixed = mixed_machines_warning(runs)
    return f"**{ok} of {len(runs)} runs measured** ({counts}).{skipped}" + (f"\n\n{mixed}" if mixed else "")


def machines(frames) -> pd.DataFrame | None:
    """Runs per machine when the runs come from more than one machine (`nwor.machines`), else None (nothing shown)."""
    counts = machine_counts(frames.runs)
    return counts if len(counts) > 1 else None


def calibration_summary(aa: pd.DataFrame) -> str:
    """One Markdown paragraph the report opens with: each design's A/A band, or that there is none."""
    if aa.empty:
        return ("**No A/A run was measured in this profile.** No effect below is calibrated against the spread "
                "two identical arms show: verdicts only compare intervals with 0, and say *(no A/A band)*. Run "
                "the calibration grid before quoting any effect.")
    lines = [f"- **{r.design}** ({r.run_id}, {r.instances}): A/A latency change {_interval(r, 'latency_change_pct')}"
             f", {r.latency_change_pct_verdict}" for r in aa.itertuples()]
    return ("**A/A calibration** (two arms of identical settings, analysed like any comparison; method: "
            f"{aa.method.iloc[0]}):\n" + "\n".join(lines)
            + "\n\nAn effect whose interval overlaps its design's A/A band is marked *not established*.")


def acceptance_by_workload(frames, grid: str | None = None) -> pd.DataFrame:
    """Draft tokens and acceptance per run (every run, with status and reason), optionally for one grid."""
    runs = frames.runs if grid is None else frames.runs[frames.runs.grid == grid]
    return runs.reindex(columns=["grid", "label", "run_id", "status", "reason", "adaptive", "confidence_threshold",
                                 "spec_num_draft_tokens", "num_drafts", "draft_acceptance_rate",
                                 "mean_acceptance_length", "feature_impl", "vllm"]).reset_index(drop=True)


def acceptance_per_position(frames, grid: str | None = None) -> pd.DataFrame:
    """One row per (run, draft position) from `metrics.acceptance_rate_per_pos`; position counts from 1.

    A run without per-position rates (failed, refused, or null in the JSON) keeps one row with position
    NaN and its reason, so that figures can say what is missing.
    """
    runs = frames.runs if grid is None else frames.runs[frames.runs.grid == grid]
    rows = []
    for run in runs.itertuples():
        rates = getattr(run, "acceptance_rate_per_pos", None)
        rates = rates if isinstance(rates, list) else [None]
        reason = first_present(run.reason, None if rates[0] is not None else "acceptance_rate_per_pos is null")
        rows += [{"grid": run.grid, "label": run.label, "run_id": run.run_id, "status": run.status,
                  "reason": reason, "adaptive": run.adaptive, "confidence_threshold": run.confidence_threshold,
                  "position": None if rate is None else i + 1, "acceptance_rate": rate,
                  "feature_impl": getattr(run, "feature_impl", None), "vllm": getattr(run, "vllm", None)}
                 for i, rate in enumerate(rates)]
    return pd.DataFrame(rows, columns=["grid", "label", "run_id", "status", "reason", "adaptive",
                                       "confidence_threshold", "position", "acceptance_rate", "feature_impl",
                                       "vllm"])
