"""Comparisons, the second stage of the report: arms within a run, runs paired across ids, the A/A band.

Every comparison is a relative change of the mean batch latency (and output tokens/s) with an
instance-aware interval from `nwor.stats.change_ci`. A run that measured a "baseline" arm is compared
within itself (its own design: within-engine is paired, engines-interleaved is not); older single-arm
results are paired across run ids, each JSON contributing its own engine instances. An A/A comparison
(two arms of identical settings) gives the band of differences that noise alone produces; an effect whose
interval overlaps the band of its design is "not established".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nwor import stats
from nwor.analysis import Frames, first_present
from nwor.stats import Estimate

ACROSS_RUNS = "across runs"  # two result files, each its own engine instance(s), run one after the other
# Which A/A band calibrates a design: separate engines, however ordered, vary like interleaved engines.
BAND_OF = {"within-engine": "within-engine", "engines-interleaved": "engines-interleaved",
           ACROSS_RUNS: "engines-interleaved"}
METRICS = {"latency": "latency_s", "throughput": "output_tokens_per_s"}
UNCALIBRATED = "(no A/A band)"


class Samples:
    """Batch values of every (run id, arm), grouped by engine instance."""

    def __init__(self, arm_batches: pd.DataFrame):
        frame = arm_batches.copy()
        missing = frame.output_tokens_per_s.isna()
        frame.loc[missing, "output_tokens_per_s"] = frame.num_output_tokens[missing] / frame.latency_s[missing]
        self._groups = {key: dict(tuple(g.groupby("instance", sort=True)))
                        for key, g in frame.groupby(["run_id", "arm"], sort=False)}

    def instances(self, run_id: str, arm: str) -> list:
        return sorted(self._groups.get((run_id, arm), {}))

    def values(self, run_id: str, arm: str, column: str) -> list[np.ndarray]:
        groups = self._groups.get((run_id, arm), {})
        return [groups[i][column].to_numpy(dtype=float) for i in sorted(groups)]

    def has(self, run_id: str, arm: str) -> bool:
        return (run_id, arm) in self._groups


def reference_arm(arms: list) -> str | None:
    """The arm others are compared with: "baseline" if measured, else "stock" (vLLM without nwor), else the first."""
    return next((name for name in ("baseline", "stock") if name in arms), arms[0] if arms else None)


def arm_pairs(samples: Samples, run_id: str, arms: list[str]) -> list[tuple[str, str]]:
    """(reference, arm) comparisons of a multi-arm run.

    Every arm against the run's reference arm; and inside an engine group that does not hold the reference,
    every arm against that group's own reference ("plugin_off" if there, else its first arm), paired, so
    that e.g. the confidence gate's cost is also measured within one engine rather than only across engines.
    """
    reference = reference_arm(arms)
    pairs = [(reference, arm) for arm in arms if arm != reference]
    groups: dict[tuple, list[str]] = {}
    for arm in arms:  # arms measured by the same engine instances share a group
        groups.setdefault(tuple(samples.instances(run_id, arm)), []).append(arm)
    for group in groups.values():
        if reference not in group and len(group) > 1:
            local = "plugin_off" if "plugin_off" in group else group[0]
            pairs += [(local, arm) for arm in group if arm != local]
    return pairs


def comparison_design(samples: Samples, base: tuple[str, str], treat: tuple[str, str]) -> tuple[str, bool]:
    """(design, paired) of comparing arm `base` with arm `treat`, each a (run id, arm).

    Within one run: "within-engine" when both arms ran in the same engine instances (paired), else
    "engines-interleaved". Two runs: `ACROSS_RUNS`, unpaired.
    """
    if base[0] != treat[0]:
        return ACROSS_RUNS, False
    paired = samples.instances(*base) == samples.instances(*treat)
    return ("within-engine" if paired else "engines-interleaved"), paired


def change(samples: Samples, base: tuple[str, str], treat: tuple[str, str]) -> dict[str, Estimate]:
    """Relative change % of each metric from arm `base` to arm `treat`, each a (run id, arm)."""
    paired = comparison_design(samples, base, treat)[1]
    return {name: stats.change_ci(samples.values(*base, column), samples.values(*treat, column), paired=paired)
            for name, column in METRICS.items()}


def describe(estimate: Estimate, paired: bool) -> str:
    """"3 paired instances, 30 vs 30 batches" or "3 vs 3 engine instances, 30 vs 30 batches"."""
    batches = f"{estimate.n_baseline} vs {estimate.n_treatment} batches"
    if paired:
        return f"{estimate.instances_treatment} paired instances, {batches}"
    return f"{estimate.instances_baseline} vs {estimate.instances_treatment} engine instances, {batches}"


def within_run(frames: Frames, samples: Samples | None = None) -> pd.DataFrame:
    """Every arm of every ok multi-arm run against its reference arm, one row each; `aa` marks A/A pairs.

    Columns: grid, run_id, label, design, reference_arm, arm, aa, paired, instances, method and the
    latency and throughput change % with their intervals.
    """
    samples = samples or Samples(frames.arm_batches)
    rows = []
    for run in frames.runs[frames.runs.status == "ok"].itertuples():
        arms = [a for a in run.arms if samples.has(run.run_id, a)]
        for reference, arm in arm_pairs(samples, run.run_id, arms):
            est = change(samples, (run.run_id, reference), (run.run_id, arm))
            design, paired = comparison_design(samples, (run.run_id, reference), (run.run_id, arm))
            row = {"grid": run.grid, "run_id": run.run_id, "label": run.label, "design": design,
                   "reference_arm": reference, "arm": arm, "paired": paired,
                   "aa": _settings(run.arm_settings, arm) == _settings(run.arm_settings, reference),
                   "instances": describe(est["latency"], paired), "method": est["latency"].method,
                   "feature_impl": run.feature_impl, "vllm": run.vllm}
            for name, estimate in est.items():
                put(row, f"{name}_change_pct", estimate)
            rows.append(row)
    columns = ["grid", "run_id", "label", "design", "reference_arm", "arm", "aa", "paired", "instances", "method",
               "feature_impl", "vllm"]
    columns += [f"{m}_change_pct{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high", "_note")]
    return pd.DataFrame(rows, columns=columns)


def _settings(arm_settings: dict, arm: str) -> dict | None:
    # What an arm measures; its engine group and display label are bookkeeping, not settings.
    settings = arm_settings.get(arm)
    return None if settings is None else {k: v for k, v in settings.items() if k not in ("group", "label")}


def put(row: dict, name: str, estimate: Estimate, better: str | None = None, band=None) -> None:
    """Write an estimate's value, interval, note (and verdict, if `better` is given) into `row`.

    A verdict of improvement or regression made without an A/A band says so: nothing calibrated it.
    """
    row.update({name: estimate.value, f"{name}_ci_low": estimate.ci_low, f"{name}_ci_high": estimate.ci_high,
                f"{name}_note": estimate.note})
    if better is not None:
        verdict = stats.verdict(estimate, better, band)
        row[f"{name}_verdict"] = f"{verdict} {UNCALIBRATED}" if band is None and verdict in (
            "improvement", "regression") else verdict


def calibration(within: pd.DataFrame) -> pd.DataFrame:
    """The A/A comparisons (two arms of identical settings), one row each, with their verdict against 0.

    An A/A interval that excludes 0 is itself a finding: drift or an order effect the design did not cancel.
    """
    aa = within[within.aa.astype(bool)].copy()
    for metric in METRICS:
        name = f"{metric}_change_pct"
        aa[f"{name}_verdict"] = [stats.verdict(Estimate(r[name], r[f"{name}_ci_low"], r[f"{name}_ci_high"],
                                                        method=r.method, note=r[f"{name}_note"]), "lower")
                                 .replace("improvement", "differs").replace("regression", "differs")
                                 for _, r in aa.iterrows()]
    return aa.reset_index(drop=True)


def aa_band(aa: pd.DataFrame, design: str, metric: str = "latency") -> tuple[tuple[float, float] | None, str]:
    """The A/A band (low, high) of `metric` change % that calibrates `design`, and a line saying which.

    The band spans every instance-aware A/A interval of that design (the widest, to be safe).
    """
    band_design = BAND_OF.get(design)
    name = f"{metric}_change_pct"
    usable = aa[(aa.design == band_design) & aa[f"{name}_ci_low"].notna()
                & (aa.method == stats.HIERARCHICAL)] if band_design and not aa.empty else aa.iloc[0:0]
    if usable.empty:
        return None, f"no A/A calibration for {design} designs (no instance-aware {band_design or design} A/A run)"
    low, high = float(usable[f"{name}_ci_low"].min()), float(usable[f"{name}_ci_high"].max())
    return (low, high), f"A/A band {low:+.1f} to {high:+.1f}% ({band_design}, {', '.join(usable.run_id)})"


def _negated(band):
    return None if band is None else (-band[1], -band[0])


def _compared(row: dict, samples: Samples, base: tuple, treat: tuple, aa: pd.DataFrame, names: dict) -> None:
    """Fill `row` with one comparison: names maps metric -> (column, sign, better)."""
    est = change(samples, base, treat)
    design, paired = comparison_design(samples, base, treat)
    row.update(design=design, method=est["latency"].method, instances=describe(est["latency"], paired),
               samples_baseline=base, samples_treatment=treat, paired=paired)
    for role, key in (("baseline", base), ("treatment", treat)):
        put(row, f"{role}_latency_s", stats.mean_ci(samples.values(*key, "latency_s")))
    notes = []
    for metric, (column, sign, better) in names.items():
        band, note = aa_band(aa, design, metric)
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
    columns = first + ["comparison", "design", "instances", "method", "calibration", "paired", "samples_baseline",
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


def compare_adaptive(frames: Frames, pairs: pd.DataFrame, aa: pd.DataFrame) -> pd.DataFrame:
    """Adaptive draft length on vs off, one row per workload of `nwor.pairing.pair_adaptive`.

    The adaptive-on run's own "baseline" arm (adaptive off) is used when it has one; otherwise its
    "run" arm is compared with the adaptive-off run's across run ids. Draft-token reduction % is a point
    value (`spec_num_draft_tokens` is one counter per run). `calibration` names the A/A band used.
    """
    samples, runs = Samples(frames.arm_batches), frames.runs.set_index("run_id")
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
                      ADAPTIVE)
            row.update(status="ok", comparison="within run")
        elif pair.status == "ok":
            _compared(row, samples, (pair.baseline_run_id, "run"), (pair.treatment_run_id, "run"), aa, ADAPTIVE)
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
    by_id, by_treatment = runs.set_index("run_id"), pairs.set_index("treatment_run_id") if len(pairs) else None
    rows = []
    for _, run in runs.sort_values(["label", "confidence_threshold"]).iterrows():
        row = {key: run.get(key) for key in ("label", "run_id", "status", "reason", "confidence_threshold",
                                             "temperature", "max_tokens", "dram_bytes_write", "tokens_stopped",
                                             "stop_pct", "early_exit_reason", "feature_impl", "vllm")}
        row["role"] = "baseline" if run.confidence_threshold == 0.0 else "treatment"
        row["dram_reason"] = None if pd.notna(run.dram_bytes_write) else first_present(
            run.reason, f"ncu {run.get('ncu_status')}: {run.get('ncu_reason')}")
        if samples.has(run.run_id, "run"):
            put(row, "latency_s", stats.mean_ci(samples.values(run.run_id, "run", "latency_s")))
        pair = by_treatment.loc[run.run_id] if row["role"] == "treatment" else None
        if pair is not None:
            row.update(baseline_run_id=pair.baseline_run_id, pair_status=pair.status, pair_reason=pair.reason)
        if row["role"] == "treatment" and samples.has(run.run_id, "baseline"):
            _compared(row, samples, (run.run_id, "baseline"), (run.run_id, "run"), aa, EARLY_EXIT)
            row["comparison"] = "within run"
        elif pair is not None and pair.status == "ok":
            _compared(row, samples, (pair.baseline_run_id, "run"), (run.run_id, "run"), aa, EARLY_EXIT)
            row["comparison"] = "across runs"
        if pair is not None and pair.status == "ok":
            base = by_id.loc[pair.baseline_run_id]
            row["dram_write_reduction_pct"] = _point_reduction(base.dram_bytes_write, run.dram_bytes_write)
            row["dram_write_saved_bytes"] = (base.dram_bytes_write - run.dram_bytes_write
                                             if pd.notna(row["dram_write_reduction_pct"]) else math.nan)
            if pd.isna(row["dram_write_reduction_pct"]):
                row["dram_reason"] = first_present(row["dram_reason"], f"baseline {base.name}: ncu "
                                                   f"{base.ncu_status}: {base.ncu_reason}")
        rows.append(row)
    first = ["label", "role", "confidence_threshold", "run_id", "status", "reason", "baseline_run_id", "pair_status",
             "pair_reason", "latency_s", "latency_s_ci_low", "latency_s_ci_high", "dram_bytes_write",
             "dram_write_saved_bytes", "dram_write_reduction_pct", "dram_reason", "tokens_stopped", "stop_pct",
             "early_exit_reason", "temperature", "max_tokens", "feature_impl", "vllm"]
    return _with_columns(rows, first, EARLY_EXIT)


def compare_arms(within: pd.DataFrame, aa: pd.DataFrame, grid: str = "calibration_grid") -> pd.DataFrame:
    """Each non-A/A arm of a grid's multi-arm runs against the reference arm (e.g. plugin overhead vs stock).

    Latency overhead % (> 0 is slower) and throughput change %, with verdicts against the design's A/A band.
    """
    rows = []
    for _, r in within[(within.grid == grid) & ~within.aa.astype(bool)].iterrows():
        row = {k: r[k] for k in ("run_id", "label", "design", "reference_arm", "arm", "instances", "method",
                                 "feature_impl", "vllm")}
        for metric, (column, _, better) in EARLY_EXIT.items():
            band, note = aa_band(aa, r.design, metric)
            estimate = Estimate(r[f"{metric}_change_pct"], r[f"{metric}_change_pct_ci_low"],
                                r[f"{metric}_change_pct_ci_high"], method=r.method, note=r[f"{metric}_change_pct_note"])
            put(row, column, estimate, better, band)
            row.setdefault("calibration", note)
        rows.append(row)
    return _with_columns(rows, ["run_id", "label", "design", "reference_arm", "arm", "instances", "method",
                                "feature_impl", "vllm"], EARLY_EXIT)
