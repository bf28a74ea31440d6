"""Findings, the third stage of the report: every number the write-up quotes, and the recommendations.

Both read only the comparison tables of `nwor.compare` (and, for averages over workloads, the samples
those tables name), so a number in the report and in a recommendation is always the same number.
"""
from __future__ import annotations

import math

import pandas as pd

from nwor import stats
from nwor.analysis import Frames, first_present
from nwor.arms import Samples, aa_band, calibrated_verdict, verdict
from nwor.machines import machine_column
from nwor.ncu_metrics import DRAM_WRITE
from nwor.stats import Estimate

MAX_LATENCY_OVERHEAD_PCT = 2.0  # an early exit that may cost more latency than this is not worth its bandwidth


def acceptance_correlation(adaptive: pd.DataFrame) -> stats.Correlation:
    """Pearson r between a workload's baseline acceptance rate and its latency reduction % (compared rows)."""
    ok = adaptive[adaptive.latency_reduction_pct.notna() & adaptive.baseline_draft_acceptance_rate.notna()]
    if len(ok) == 0:
        return stats.Correlation(math.nan, math.nan, math.nan, math.nan, 0, note="no correlation: 0 pairs")
    return stats.correlation_ci(ok.baseline_draft_acceptance_rate.astype(float),
                                ok.latency_reduction_pct.astype(float))


def _estimate(row, name: str) -> Estimate:
    return Estimate(getattr(row, name, math.nan), getattr(row, f"{name}_ci_low", math.nan),
                    getattr(row, f"{name}_ci_high", math.nan), method=getattr(row, "method", "") or "",
                    note=first_present(getattr(row, f"{name}_note", None), getattr(row, "reason", None)))


def _mean_over_workloads(frames: Frames, compared: pd.DataFrame, column: str, aa: pd.DataFrame):
    """Mean over workloads of a compared metric, its interval, the widest A/A band of their designs (each from
    its comparisons' machine; none when none has a band), and whether every design and machine had one."""
    samples = Samples(frames.arm_batches)
    groups = [(samples.values(*r.samples_baseline, column), samples.values(*r.samples_treatment, column), r.paired)
              for r in compared.itertuples()]
    bands = [aa_band(aa, design, "latency" if column == "latency_s" else "throughput", machine)
             for design, machine in sorted(set(zip(compared.design, machine_column(compared))))]
    known = [band for band, _ in bands if band is not None]
    # A workload without a band must not lift the mean past the bands the others have (H200 session 12:
    # W5, "not established" on its machine, averaged with an uncalibrated W3 read "improvement").
    band = (min(b[0] for b in known), max(b[1] for b in known)) if known else None
    return stats.mean_change_ci(groups), band, len(known) == len(bands), "; ".join(note for _, note in bands)


def key_numbers(frames: Frames, aa: pd.DataFrame, adaptive: pd.DataFrame, early_exit: pd.DataFrame,
                overhead: pd.DataFrame, determinism: pd.DataFrame) -> pd.DataFrame:
    """Every number the write-up quotes, one per row, the A/A calibration first.

    Columns: key, quantity, value, ci_low, ci_high, verdict, design, instances (engine instances and batches
    behind the number), method and basis (runs, A/A band, what was left out).
    """
    rows = []

    def add(key, quantity, estimate, verdict_text, basis, design=None, instances=None):
        rows.append({"key": key, "quantity": quantity, "value": estimate.value, "ci_low": estimate.ci_low,
                     "ci_high": estimate.ci_high, "verdict": verdict_text, "design": design,
                     "instances": instances, "method": estimate.method or None, "basis": basis})

    if aa.empty:
        add("calibration.none", "A/A calibration", Estimate(math.nan), "NO A/A RUN: no effect below is calibrated",
            "no run with two arms of identical settings in this profile")
    for r in aa.itertuples():
        for metric in ("latency", "throughput"):
            add(f"calibration.{r.run_id}.{metric}_change_pct", f"A/A {metric} change %, {r.design}",
                _estimate(r, f"{metric}_change_pct"), getattr(r, f"{metric}_change_pct_verdict"),
                f"{r.run_id}: arm {r.arm} vs {r.reference_arm}, identical settings", r.design, r.instances)
    compared = adaptive[adaptive.latency_reduction_pct.notna()]
    left_out = "; ".join(f"{r.label} left out ({first_present(r.reason, r.status)})"
                         for r in adaptive.itertuples() if r.Index not in compared.index) or "none left out"
    for key, column, sign in (("latency_reduction_pct", "latency_s", -1),
                              ("throughput_improvement_pct", "output_tokens_per_s", 1)):
        if len(compared):
            estimate, band, calibrated, note = _mean_over_workloads(frames, compared, column, aa)
            estimate = estimate.negated() if sign < 0 else estimate
            band = band if band is None or sign > 0 else (-band[1], -band[0])
            said = calibrated_verdict(estimate, "higher", band, calibrated)
            add(f"adaptive.mean.{key}", f"adaptive: {key}, unweighted mean of {len(compared)} workloads", estimate,
                said, f"{note}; {left_out}",
                ", ".join(sorted(set(compared.design))),
                f"{estimate.instances_baseline} vs {estimate.instances_treatment} instances in all")
    for r in adaptive.itertuples():
        add(f"adaptive.W{r.workload_number}.latency_reduction_pct", f"adaptive: latency_reduction_pct, {r.label}",
            _estimate(r, "latency_reduction_pct"), getattr(r, "latency_reduction_pct_verdict", None),
            f"{first_present(getattr(r, 'comparison', None), 'not compared')}: {r.baseline_run_id} vs "
            f"{r.treatment_run_id}; {first_present(getattr(r, 'calibration', None), r.reason)}",
            getattr(r, "design", None), getattr(r, "instances", None))
    add("adaptive.mean.draft_token_reduction_pct", "adaptive: draft_token_reduction_pct, mean over workloads",
        Estimate(float(adaptive.draft_token_reduction_pct.mean()) if len(adaptive) else math.nan),
        "no verdict: spec_num_draft_tokens is one counter per run",
        "mean of per-workload (1 - adaptive1/adaptive0) x 100 on spec_num_draft_tokens")
    corr = acceptance_correlation(adaptive)
    add("adaptive.correlation_r", "adaptive: Pearson r, baseline acceptance rate vs latency_reduction_pct",
        Estimate(corr.r, corr.ci_low, corr.ci_high, method="bootstrap over workloads"),
        corr.note or ("inside the noise" if corr.ci_low <= 0 <= corr.ci_high else "correlated (CI excludes 0)"),
        f"p = {corr.p_value:.3f} from scipy.stats.pearsonr, n = {corr.n} workloads")
    for r in early_exit[early_exit.role == "treatment"].itertuples() if len(early_exit) else []:
        what = f"early exit threshold {r.confidence_threshold}, {r.label}"
        key = f"early_exit.{r.label.replace(' ', '_')}.threshold{r.confidence_threshold}"
        add(f"{key}.latency_overhead_pct", f"{what}: latency_overhead_pct", _estimate(r, "latency_overhead_pct"),
            first_present(getattr(r, "latency_overhead_pct_verdict", None), f"not compared: {r.pair_reason}"),
            f"{first_present(getattr(r, 'comparison', None), 'not compared')}: {r.run_id}; "
            f"{first_present(getattr(r, 'calibration', None), r.pair_reason)}",
            getattr(r, "design", None), getattr(r, "instances", None))
        add(f"{key}.dram_write_reduction_pct", f"{what}: dram_write_reduction_pct",
            Estimate(getattr(r, "dram_write_reduction_pct", math.nan)),
            f"no verdict: {first_present(r.pair_reason, r.dram_reason, 'ncu gives one region total per run')}",
            f"{r.baseline_run_id} vs {r.run_id}; {DRAM_WRITE} from ncu")
        add(f"{key}.kv_drafter_write_reduction_pct", f"{what}: drafter KV-cache write reduction %",
            Estimate(getattr(r, "kv_drafter_write_reduction_pct", math.nan)),
            f"no verdict: {first_present(r.pair_reason, getattr(r, 'kv_reason', None), 'one ncu KV sub-pass per run')}",
            f"{r.baseline_run_id} vs {r.run_id}; ncu KV-write sub-pass, L2 write bytes inside nwor_drafter")
        add(f"{key}.stop_pct", f"{what}: tokens stopped %", Estimate(r.stop_pct),
            f"no verdict: {first_present(r.reason, r.early_exit_reason, 'one counter per run')}",
            "early_exit.stop_pct from the early-exit instrumentation")
    for r in overhead.itertuples():
        add(f"arms.{r.run_id}.{r.arm}_vs_{r.reference_arm}.latency_overhead_pct",
            f"{r.arm} vs {r.reference_arm}: latency overhead %",
            _estimate(r, "latency_overhead_pct"), r.latency_overhead_pct_verdict, f"{r.run_id}; {r.calibration}",
            r.design, r.instances)
    differs = determinism[determinism.status == "differs"]
    n_compared = int(determinism.status.isin(["identical", "differs"]).sum())
    add("determinism.pairs_differing", "determinism: temperature-0 pairs whose outputs differ",
        Estimate(float(len(differs))), "finding: investigate" if len(differs) else "all identical",
        "; ".join(f"{r.treatment_run_id}: {r.reason}" for r in differs.itertuples())
        or f"output_hashes compared request by request in {n_compared} pairs")
    not_ok = frames.runs[frames.runs.status != "ok"]
    add("runs.not_measured", "runs not measured", Estimate(float(len(not_ok))), "see basis" if len(not_ok) else "none",
        "; ".join(f"{r.run_id}: {r.reason}" for r in not_ok.itertuples()) or "all ok",
        instances=f"{len(frames.runs)} runs")
    return pd.DataFrame(rows)


def _fmt(value, low=math.nan, high=math.nan) -> str:
    if pd.isna(value):
        return "n/a"
    return f"{value:+.1f}%" + ("" if pd.isna(low) else f" (95% CI {low:+.1f} to {high:+.1f})")


def _fmt_ci(row, name: str) -> str:
    return _fmt(getattr(row, name, math.nan), getattr(row, f"{name}_ci_low", math.nan),
                getattr(row, f"{name}_ci_high", math.nan))


def _pick_threshold(early_exit: pd.DataFrame, temperature: float, differs: dict, max_overhead: float):
    candidates = early_exit[(early_exit.role == "treatment") & (early_exit.temperature == temperature)] \
        if len(early_exit) else early_exit
    if candidates.empty:
        return None, f"no early-exit runs at temperature {temperature}"
    usable, rejected = [], []
    for r in candidates.itertuples():
        name = f"threshold {r.confidence_threshold} ({r.label})"
        overhead = _estimate(r, "latency_overhead_pct")
        if pd.isna(getattr(r, "dram_write_reduction_pct", math.nan)):
            rejected.append(f"{name}: no DRAM data ({first_present(r.pair_reason, r.dram_reason)})")
        elif r.run_id in differs:
            rejected.append(f"{name}: outputs differ from threshold 0.0 at temperature 0")
        elif not overhead.instance_aware:
            rejected.append(f"{name}: latency {verdict(overhead, 'lower')}")
        elif r.dram_write_reduction_pct <= 0 or not overhead.ci_high <= max_overhead:
            rejected.append(f"{name}: DRAM writes {_fmt(-r.dram_write_reduction_pct)}, latency "
                            f"{_fmt_ci(r, 'latency_overhead_pct')} (CI must stay below +{max_overhead}%)")
        else:
            usable.append(r)
    if not usable:
        return 0.0, "off: " + "; ".join(rejected)
    best = max(usable, key=lambda r: r.dram_write_reduction_pct)
    return best.confidence_threshold, (
        f"threshold {best.confidence_threshold} ({best.label}): DRAM writes {_fmt(-best.dram_write_reduction_pct)}, "
        f"tokens stopped {best.stop_pct:.1f}%, latency {_fmt_ci(best, 'latency_overhead_pct')}; "
        f"largest DRAM saving whose latency CI stays below +{max_overhead}%")


def recommend(adaptive: pd.DataFrame, early_exit: pd.DataFrame, determinism: pd.DataFrame, *,
              max_latency_overhead_pct: float = MAX_LATENCY_OVERHEAD_PCT) -> pd.DataFrame:
    """Recommend a configuration per workload type, with the numbers each choice rests on.

    Adaptive draft length is "on" only if its latency reduction is an "improvement" (instance-aware
    interval above 0 and clear of the A/A band) and, at temperature 0, outputs match adaptive off. The
    confidence threshold, from the early-exit runs at the workload's temperature, is the one with the largest
    DRAM write reduction whose instance-aware latency-overhead CI stays below `max_latency_overhead_pct`
    and whose outputs match threshold 0.0; 0.0 (off) when none qualifies, None when nothing was measured.
    """
    differing = determinism[determinism.status == "differs"]
    differs = dict(zip(differing.treatment_run_id, differing.reason))  # run id -> how many differ, and how
    rows = []
    for r in adaptive.itertuples():
        latency, said = _fmt_ci(r, "latency_reduction_pct"), getattr(r, "latency_reduction_pct_verdict", None)
        if pd.isna(getattr(r, "latency_reduction_pct", math.nan)):
            choice, why = "no recommendation", first_present(r.reason, said)
        elif r.treatment_run_id in differs:
            choice, why = "off", (f"outputs differ from adaptive off: {differs[r.treatment_run_id]}; "
                                   f"latency reduction {latency}")
        elif str(said).startswith("improvement"):
            choice, why = "on", (f"latency reduction {latency}, throughput {_fmt_ci(r, 'throughput_improvement_pct')}"
                                 f", draft tokens {_fmt(-r.draft_token_reduction_pct)}; {r.instances}")
        else:
            choice, why = "off", f"latency reduction {latency}: {said}"
        threshold, threshold_why = _pick_threshold(early_exit, r.temperature, differs, max_latency_overhead_pct)
        rows.append({"workload": r.label, "temperature": r.temperature, "adaptive_draft_length": choice,
                     "adaptive_reason": why, "confidence_threshold": threshold, "threshold_reason": threshold_why})
    return pd.DataFrame(rows, columns=["workload", "temperature", "adaptive_draft_length", "adaptive_reason",
                                       "confidence_threshold", "threshold_reason"])

