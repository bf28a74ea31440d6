"""Comparisons the report makes, the second half of the compare stage: adaptive on/off, thresholds vs 0.0,
and the extra arms of calibration runs.

A run that measured its own "baseline" arm is compared within itself (`nwor.arms`); older single-arm results
are paired across run ids (`nwor.pairing`), each JSON contributing its own engine instances. Every verdict
is judged against the A/A band of the comparison's design, from A/A runs on the comparison's machine.
"""
from __future__ import annotations

import math

import pandas as pd

from nwor import stats
from nwor.analysis import Frames, first_present
from nwor.arms import Samples, aa_band, change, comparison_design, describe, put
from nwor.machines import machine_of, shared_machine
from nwor.stats import Estimate


def _negated(band):
    return None if band is None else (-band[1], -band[0])


def _compared(row: dict, samples: Samples, base: tuple, treat: tuple, aa: pd.DataFrame, names: dict,
              machines: dict) -> None:
    """Fill `row` with one comparison: names maps metric -> (column, sign, better); machines run id -> machine."""
    est = change(samples, base, treat)
    design, paired = comparison_design(samples, base, treat)
    machine = shared_machine(machines.get(base[0]), machines.get(treat[0]))
    row.update(design=design, method=est["latency"].method, instances=describe(est["latency"], paired),
               samples_baseline=base, samples_treatment=treat, paired=paired, machine=machine)
    for role, key in (("baseline", base), ("treatment", treat)):
        put(row, f"{role}_latency_s", stats.mean_ci(samples.values(*key, "latency_s")))
    notes = []
    for metric, (column, sign, better) in names.items():
        band, note = aa_band(aa, design, metric, machine)
        estimate = est[metric] if sign > 0 else est[metric].negated()
        put(row, column, estimate, better, band if sign > 0 else _negated(band))
        notes.append(note)
    row["calibration"] = notes[0]


# metric -> (column, sign of the column relative to the change %, which direction is better)
ADAPTIVE = {"latency": ("latency_reduction_pct", -1, "higher"),
            "throughput": ("throughput_improvement_pct", 1, "higher")}
EARLY_EXIT = {"latency": ("latency_overhead_pct", 1, "lower"), "throughput": ("throughput_change_pct", 1, "higher")}


def _with_columns(rows: list[dict], first: list[str], names: dict) -> pd.DataFrame:
    # Every comparison column exists even when nothing could be compared (e.g. every run failed).
    columns = first + ["comparison", "machine", "design", "instances", "method", "calibration", "paired",
                       "samples_baseline",
                       "samples_treatment", "baseline_latency_s", "baseline_latency_s_ci_low",
                       "baseline_latency_s_ci_high", "treatment_latency_s", "treatment_latency_s_ci_low",
                       "treatment_latency_s_ci_high"]
    columns += [f"{column}{s}" for column, _, _ in names.values()
                for s in ("", "_ci_low", "_ci_high", "_note", "_verdict")]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys(columns + list(frame.columns))))


def _point_reduction(baseline, treatment) -> float:
    if pd.isna(baseline) or pd.isna(treatment) or baseline == 0:
        return math.nan
    return -100 * (treatment - baseline) / baseline


def _kv_change(base: pd.Series, run: pd.Series) -> dict:
    """Drafter KV-cache write bytes at a threshold against threshold 0.0, from the ncu KV-write sub-pass.

    Point values (one sub-pass window per run, no interval): over the whole window, per drafted token (the two
    windows draft slightly different token counts), and bytes saved per token the gate stopped in the
    threshold's window, to set against the drafter's KV bytes per token (2 x kv_heads x head_dim x dtype bytes x
    drafter layers: 4 KiB for the 8B-shaped EAGLE head).
    """
    def per_token(r):
        return r.kv_drafter_bytes / r.kv_window_draft_tokens if r.kv_window_draft_tokens else math.nan

    stopped = run.kv_window_tokens_stopped
    saved = base.kv_drafter_bytes - run.kv_drafter_bytes
    return {"kv_drafter_write_reduction_pct": _point_reduction(base.kv_drafter_bytes, run.kv_drafter_bytes),
            "kv_drafter_write_reduction_per_draft_token_pct": _point_reduction(per_token(base), per_token(run)),
            "kv_saved_bytes_per_stopped_token": saved / stopped if pd.notna(saved) and stopped else math.nan}


def compare_adaptive(frames: Frames, pairs: pd.DataFrame, aa: pd.DataFrame) -> pd.DataFrame:
    """Adaptive draft length on vs off, one row per workload of `nwor.pairing.pair_adaptive`.

    The adaptive-on run's own "baseline" arm (adaptive off) is used when it has one, latency and draft
    counters alike; otherwise its "run" arm is compared with the adaptive-off run's across run ids.
    Draft-token reduction % is a point value (counters are totals, not per batch). `calibration` names the
    A/A band used.
    """
    samples, runs, machines = Samples(frames.arm_batches), frames.runs.set_index("run_id"), machine_of(frames.runs)
    counters = frames.arm_counters.set_index(["run_id", "arm"]) if len(frames.arm_counters) else pd.DataFrame()
    rows = []
    for _, pair in pairs.iterrows():
        row = pair.to_dict()
        for role in ("baseline", "treatment"):
            run_id = row[f"{role}_run_id"]
            run = runs.loc[run_id] if run_id in runs.index else None
            for key in ("spec_num_draft_tokens", "draft_acceptance_rate", "feature_impl", "vllm"):
                row[f"{role}_{key}"] = None if run is None else run[key]
        row["vllm"] = " / ".join(sorted({str(row[f"{r}_vllm"]) for r in ("baseline", "treatment")
                                         if row[f"{r}_vllm"] is not None}))
        row["feature_impl"] = f"{row['baseline_feature_impl']} vs {row['treatment_feature_impl']}"
        if pd.notna(pair.treatment_run_id) and samples.has(pair.treatment_run_id, "baseline"):
            _compared(row, samples, (pair.treatment_run_id, "baseline"), (pair.treatment_run_id, "run"), aa,
                      ADAPTIVE, machines)
            row.update(status="ok", comparison="within run")
            for role, arm in (("baseline", "baseline"), ("treatment", "run")):  # the arms' own counters
                if (pair.treatment_run_id, arm) in counters.index:
                    counted = counters.loc[(pair.treatment_run_id, arm)]
                    row[f"{role}_spec_num_draft_tokens"] = counted.num_draft_tokens
                    row[f"{role}_draft_acceptance_rate"] = counted.draft_acceptance_rate
        elif pair.status == "ok":
            _compared(row, samples, (pair.baseline_run_id, "run"), (pair.treatment_run_id, "run"), aa, ADAPTIVE,
                      machines)
            row["comparison"] = "across runs"
        else:
            row["latency_reduction_pct_verdict"] = row["throughput_improvement_pct_verdict"] = (
                f"not compared: {pair.status}")
        row["draft_token_reduction_pct"] = _point_reduction(row["baseline_spec_num_draft_tokens"],
                                                            row["treatment_spec_num_draft_tokens"])
        rows.append(row)
    return _with_columns(rows, list(pairs.columns) + ["draft_token_reduction_pct"], ADAPTIVE)


def compare_early_exit(frames: Frames, pairs: pd.DataFrame, aa: pd.DataFrame) -> pd.DataFrame:
    """Confidence early exit: one row per early-exit run, baselines (threshold 0.0) included.

    Latency overhead % and throughput change % come from the run's own threshold-0.0 "baseline" arm when
    it has one, else from the paired threshold-0.0 run (`nwor.pairing.pair_early_exit`). DRAM write
    reduction % is a point value against the paired run (ncu gives one region total per run), and
    `dram_reason` says why it is missing.
    """
    samples, runs = Samples(frames.arm_batches), frames.runs[frames.runs.grid == "early_exit_grid"]
    machines = machine_of(frames.runs)
    by_id, by_treatment = runs.set_index("run_id"), pairs.set_index("treatment_run_id") if len(pairs) else None
    rows = []
    for _, run in runs.sort_values(["label", "confidence_threshold"]).iterrows():
        row = {key: run.get(key) for key in ("label", "run_id", "status", "reason", "confidence_threshold",
                                             "temperature", "max_tokens", "dram_bytes_write", "tokens_stopped",
                                             "stop_pct", "early_exit_reason", "feature_impl", "vllm",
                                             "kv_drafter_bytes", "kv_target_bytes", "kv_window_draft_tokens",
                                             "kv_window_tokens_stopped", "kv_window_checks")}
        row["kv_reason"] = None if pd.notna(run.get("kv_drafter_bytes")) else first_present(
            run.reason, run.get("kv_reason"), "no KV-write sub-pass")
        row["role"] = "baseline" if run.confidence_threshold == 0.0 else "treatment"
        row["dram_reason"] = None if pd.notna(run.dram_bytes_write) else first_present(
            run.reason, f"ncu {run.get('ncu_status')}: {run.get('ncu_reason')}")
        if samples.has(run.run_id, "run"):
            put(row, "latency_s", stats.mean_ci(samples.values(run.run_id, "run", "latency_s")))
        pair = by_treatment.loc[run.run_id] if row["role"] == "treatment" else None
        if pair is not None:
            row.update(baseline_run_id=pair.baseline_run_id, pair_status=pair.status, pair_reason=pair.reason)
        if row["role"] == "treatment" and samples.has(run.run_id, "baseline"):
            _compared(row, samples, (run.run_id, "baseline"), (run.run_id, "run"), aa, EARLY_EXIT, machines)
            row["comparison"] = "within run"
        elif pair is not None and pair.status == "ok":
            _compared(row, samples, (pair.baseline_run_id, "run"), (run.run_id, "run"), aa, EARLY_EXIT, machines)
            row["comparison"] = "across runs"
        if pair is not None and pair.status == "ok":
            base = by_id.loc[pair.baseline_run_id]
            row["dram_write_reduction_pct"] = _point_reduction(base.dram_bytes_write, run.dram_bytes_write)
            row["dram_write_saved_bytes"] = (base.dram_bytes_write - run.dram_bytes_write
                                             if pd.notna(row["dram_write_reduction_pct"]) else math.nan)
            row.update(_kv_change(base, run))
            if pd.isna(row["kv_drafter_write_reduction_pct"]) and row["kv_reason"] is None:
                row["kv_reason"] = f"baseline {base.name}: {first_present(base.get('kv_reason'), 'no KV bytes')}"
            if pd.isna(row["dram_write_reduction_pct"]):
                row["dram_reason"] = first_present(row["dram_reason"], f"baseline {base.name}: ncu "
                                                   f"{base.ncu_status}: {base.ncu_reason}")
        rows.append(row)
    first = ["label", "role", "confidence_threshold", "run_id", "status", "reason", "baseline_run_id", "pair_status",
             "pair_reason", "latency_s", "latency_s_ci_low", "latency_s_ci_high", "dram_bytes_write",
             "dram_write_saved_bytes", "dram_write_reduction_pct", "dram_reason", "tokens_stopped", "stop_pct",
             "early_exit_reason", "kv_drafter_bytes", "kv_target_bytes", "kv_drafter_write_reduction_pct",
             "kv_drafter_write_reduction_per_draft_token_pct", "kv_saved_bytes_per_stopped_token", "kv_reason",
             "kv_window_draft_tokens", "kv_window_tokens_stopped", "kv_window_checks", "temperature", "max_tokens",
             "feature_impl", "vllm"]
    return _with_columns(rows, first, EARLY_EXIT)


def compare_arms(within: pd.DataFrame, aa: pd.DataFrame,
                 shown_elsewhere: tuple[str, ...] = ("adaptive_grid", "early_exit_grid")) -> pd.DataFrame:
    """Every other arm comparison within a run (plugin overhead vs stock, scenarios vs their features off).

    The grids in `shown_elsewhere` have their own tables (`compare_adaptive`, `compare_early_exit`).
    Latency overhead % (> 0 is slower) and throughput change %, with verdicts against the design's A/A band
    (the run's machine's).
    """
    rows = []
    for _, r in within[~within.grid.isin(shown_elsewhere) & ~within.aa.astype(bool)].iterrows():
        row = {k: r.get(k) for k in ("grid", "run_id", "label", "machine", "design", "reference_arm", "arm",
                                     "instances", "method", "feature_impl", "vllm")}
        for metric, (column, _, better) in EARLY_EXIT.items():
            band, note = aa_band(aa, r.design, metric, row["machine"])
            estimate = Estimate(r[f"{metric}_change_pct"], r[f"{metric}_change_pct_ci_low"],
                                r[f"{metric}_change_pct_ci_high"], method=r.method, note=r[f"{metric}_change_pct_note"])
            put(row, column, estimate, better, band)
            row.setdefault("calibration", note)
        rows.append(row)
    return _with_columns(rows, ["grid", "run_id", "label", "design", "reference_arm", "arm", "instances", "method",
                                "feature_impl", "vllm"], EARLY_EXIT)
