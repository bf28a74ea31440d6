"""Bootstrap confidence intervals for comparing per-batch (or per-request) samples, and their verdicts.

Every function draws from its own `numpy.random.default_rng(seed)`, so a number does not depend on the
order in which a report computes things, and the same inputs always give the same interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 20261127  # fixed so that re-rendering a report reproduces every interval exactly
MIN_SAMPLES = 2  # a bootstrap of one sample is a point, which would look like certainty


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap interval; `note` says why an interval is missing."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_baseline: int = 0
    n_treatment: int = 0
    note: str | None = None

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    def negated(self) -> Estimate:
        """The same estimate with its sign flipped (a change of -5 % is a reduction of 5 %)."""
        return replace(self, value=-self.value, ci_low=-self.ci_high, ci_high=-self.ci_low)


@dataclass(frozen=True)
class Correlation:
    """Pearson r between two per-group quantities, with a bootstrap interval over groups."""

    r: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    note: str | None = None


def first_present(*values):
    """The first value that is neither None nor NaN (pandas turns a missing reason into NaN), else None."""
    return next((v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))), None)


def _samples(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values: {array.tolist()}")
    return array


def _resampled_means(values: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    # shape (n_resamples, n): each row is one resample with replacement
    return values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def percent_change(baseline, treatment) -> float:
    """`100 * (mean(treatment) - mean(baseline)) / mean(baseline)`.

    Raises:
        ValueError: empty input, non-finite values, or a baseline mean of 0.
    """
    b, t = _samples(baseline, "baseline"), _samples(treatment, "treatment")
    if b.mean() == 0:
        raise ValueError("baseline mean is 0; a percent change is undefined")
    return float(100 * (t.mean() - b.mean()) / b.mean())


def percent_change_ci(baseline, treatment, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> Estimate:
    """Percent change of the mean from baseline to treatment, with a percentile-bootstrap CI.

    Baseline and treatment are resampled independently (batches of two runs are not paired).
    Fewer than `MIN_SAMPLES` samples on either side gives the point estimate with no interval and a note.

    Raises:
        ValueError: empty input, non-finite values, or a baseline mean of 0.
    """
    value = percent_change(baseline, treatment)
    b, t = np.asarray(baseline, dtype=float), np.asarray(treatment, dtype=float)
    if min(b.size, t.size) < MIN_SAMPLES:
        return Estimate(value, n_baseline=b.size, n_treatment=t.size,
                        note=f"no CI: {b.size} baseline and {t.size} treatment samples (need {MIN_SAMPLES})")
    rng = np.random.default_rng(seed)
    b_means, t_means = _resampled_means(b, rng, n_resamples), _resampled_means(t, rng, n_resamples)
    low, high = _interval(100 * (t_means - b_means) / b_means, confidence)
    return Estimate(value, low, high, b.size, t.size)


def mean_ci(values, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
            confidence: float = CONFIDENCE) -> Estimate:
    """The mean of one run's samples with a percentile-bootstrap CI (no interval below `MIN_SAMPLES`).

    Raises:
        ValueError: empty input or non-finite values.
    """
    x = _samples(values, "values")
    if x.size < MIN_SAMPLES:
        return Estimate(float(x.mean()), n_treatment=x.size, note=f"no CI: {x.size} sample")
    low, high = _interval(_resampled_means(x, np.random.default_rng(seed), n_resamples), confidence)
    return Estimate(float(x.mean()), low, high, 0, x.size)


def mean_percent_change_ci(groups: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                           n_resamples: int = N_RESAMPLES, seed: int = SEED,
                           confidence: float = CONFIDENCE) -> Estimate:
    """The unweighted mean over groups (workloads) of each group's percent change, with a CI.

    Each bootstrap draw resamples every group's baseline and treatment samples, recomputes each group's
    change and averages them: workloads count equally, batches carry the noise.

    Raises:
        ValueError: no groups, or a group that `percent_change` rejects.
    """
    if not groups:
        raise ValueError("mean_percent_change_ci needs at least one (baseline, treatment) group")
    value = float(np.mean([percent_change(b, t) for b, t in groups]))
    n_b, n_t = sum(len(b) for b, _ in groups), sum(len(t) for _, t in groups)
    if min(min(len(b), len(t)) for b, t in groups) < MIN_SAMPLES:
        return Estimate(value, n_baseline=n_b, n_treatment=n_t,
                        note=f"no CI: a group has fewer than {MIN_SAMPLES} samples")
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_resamples)
    for b, t in groups:
        b_means = _resampled_means(np.asarray(b, dtype=float), rng, n_resamples)
        t_means = _resampled_means(np.asarray(t, dtype=float), rng, n_resamples)
        draws += 100 * (t_means - b_means) / b_means
    low, high = _interval(draws / len(groups), confidence)
    return Estimate(value, low, high, n_b, n_t)


def correlation_ci(x, y, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                   confidence: float = CONFIDENCE) -> Correlation:
    """Pearson r of paired values with a bootstrap CI over pairs and scipy's two-sided p-value.

    Resamples in which x or y is constant have no r and are left out of the interval.
    Fewer than 3 pairs, or constant x or y, gives NaN with a note.

    Raises:
        ValueError: x and y differ in length, or contain non-finite values.
    """
    xs, ys = _samples(x, "x"), _samples(y, "y")
    if xs.size != ys.size:
        raise ValueError(f"x has {xs.size} values but y has {ys.size}")
    if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Correlation(math.nan, math.nan, math.nan, math.nan, xs.size,
                           note=f"no correlation: {xs.size} pairs (need 3 with varying values)")
    result = scipy_stats.pearsonr(xs, ys)
    idx = np.random.default_rng(seed).integers(0, xs.size, size=(n_resamples, xs.size))
    bx, by = xs[idx], ys[idx]
    bx, by = bx - bx.mean(axis=1, keepdims=True), by - by.mean(axis=1, keepdims=True)
    denominator = np.sqrt((bx ** 2).sum(axis=1) * (by ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = np.where(denominator > 0, (bx * by).sum(axis=1) / denominator, np.nan)
    low, high = _interval(draws, confidence)
    return Correlation(float(result.statistic), low, high, float(result.pvalue), xs.size)


def verdict(estimate: Estimate, better: str = "higher") -> str:
    """Say whether a change is an improvement, a regression, or inside the noise (its CI includes 0).

    Args:
        estimate: the change, e.g. a latency reduction in percent.
        better: "higher" when a positive value is good (a reduction, a throughput gain), "lower" when a
            positive value is bad (an overhead).

    Raises:
        ValueError: `better` is neither "higher" nor "lower".
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if math.isnan(estimate.value):
        return estimate.note or "no data"
    if not estimate.has_ci:
        return estimate.note or "no CI"
    if estimate.ci_low <= 0 <= estimate.ci_high:
        return "inside the noise (CI includes 0)"
    good = estimate.ci_low > 0 if better == "higher" else estimate.ci_high < 0
    return "improvement" if good else "regression"


def _samples_by_run(frames, level: str) -> tuple[dict, dict]:
    # latency samples per run (batch latency_s, or request e2e_s) and per-batch output tokens/s
    if level not in ("batch", "request"):
        raise ValueError(f"level must be 'batch' or 'request', got {level!r}")
    frame, column = (frames.batches, "latency_s") if level == "batch" else (frames.requests, "e2e_s")
    latency = frame.groupby("run_id")[column].apply(list).to_dict() if len(frame) else {}
    throughput = (frames.batches.groupby("run_id").output_tokens_per_s.apply(list).to_dict()
                  if len(frames.batches) else {})
    return latency, throughput


def _put(row: dict, name: str, estimate: Estimate, better: str) -> None:
    row.update({name: estimate.value, f"{name}_ci_low": estimate.ci_low, f"{name}_ci_high": estimate.ci_high,
                f"{name}_verdict": verdict(estimate, better)})


def _point_reduction(baseline, treatment) -> float:
    if baseline is None or treatment is None or pd.isna(baseline) or pd.isna(treatment):
        return math.nan
    return -percent_change([baseline], [treatment])


def compare_adaptive(frames, pairs: pd.DataFrame, *, level: str = "batch") -> pd.DataFrame:
    """Adaptive draft length on vs off, one row per workload of `nwor.analysis.pair_adaptive`.

    Latency reduction % and throughput improvement % carry 95 % bootstrap CIs and a verdict. Draft-token
    reduction % (`spec_num_draft_tokens`) is a point value: the schema keeps one counter per run.
    Rows whose pair is not "ok" keep their status and reason and have NaN measurements.

    Raises:
        ValueError: `level` is not "batch" or "request".
    """
    latency, throughput = _samples_by_run(frames, level)
    runs = frames.runs.set_index("run_id")
    rows = []
    for _, pair in pairs.iterrows():
        row, ids = pair.to_dict(), {"baseline": pair.baseline_run_id, "treatment": pair.treatment_run_id}
        for role, run_id in ids.items():
            run = runs.loc[run_id] if run_id in runs.index else None
            for key in ("spec_num_draft_tokens", "draft_acceptance_rate", "feature_impl", "vllm"):
                row[f"{role}_{key}"] = None if run is None else run[key]
            if run_id in latency:
                _put(row, f"{role}_latency_s", mean_ci(latency[run_id]), "lower")
        row["vllm"] = " / ".join(sorted({str(row[f"{r}_vllm"]) for r in ids if row[f"{r}_vllm"] is not None}))
        row["feature_impl"] = f"{row['baseline_feature_impl']} vs {row['treatment_feature_impl']}"
        if pair.status == "ok":
            b, t = ids["baseline"], ids["treatment"]
            row["n_samples"] = f"{len(latency[b])} vs {len(latency[t])}"
            _put(row, "latency_reduction_pct", percent_change_ci(latency[b], latency[t]).negated(), "higher")
            _put(row, "throughput_improvement_pct", percent_change_ci(throughput[b], throughput[t]), "higher")
            row["draft_token_reduction_pct"] = _point_reduction(row["baseline_spec_num_draft_tokens"],
                                                                row["treatment_spec_num_draft_tokens"])
        else:
            row["latency_reduction_pct_verdict"] = row["throughput_improvement_pct_verdict"] = (
                f"not compared: {pair.status}")
        rows.append(row)
    first = list(pairs.columns) + [f"{n}{s}" for n in ("latency_reduction_pct", "throughput_improvement_pct")
                                   for s in ("", "_ci_low", "_ci_high", "_verdict")]
    first += ["draft_token_reduction_pct", "n_samples"]
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys(first + list(frame.columns))))


def compare_early_exit(frames, pairs: pd.DataFrame, *, level: str = "batch") -> pd.DataFrame:
    """Confidence early exit: one row per early-exit run, baselines (threshold 0.0) included.

    Treatment rows paired by `nwor.analysis.pair_early_exit` get the DRAM write reduction % against their
    baseline (point value: ncu gives one region total per run), tokens stopped % (`early_exit.stop_pct`),
    and latency overhead % with a 95 % bootstrap CI. `dram_reason` says why DRAM bytes are missing.

    Raises:
        ValueError: `level` is not "batch" or "request".
    """
    latency, throughput = _samples_by_run(frames, level)
    runs = frames.runs[frames.runs.grid == "early_exit_grid"]
    by_id, by_treatment = runs.set_index("run_id"), pairs.set_index("treatment_run_id") if len(pairs) else None
    rows = []
    for _, run in runs.sort_values(["label", "confidence_threshold"]).iterrows():
        row = {key: run[key] for key in ("label", "run_id", "status", "reason", "confidence_threshold",
                                         "temperature", "max_tokens", "dram_bytes_write", "tokens_stopped",
                                         "stop_pct", "early_exit_reason", "feature_impl", "vllm")}
        row["role"] = "baseline" if run.confidence_threshold == 0.0 else "treatment"
        row["dram_reason"] = None if pd.notna(run.dram_bytes_write) else first_present(
            run.reason, f"ncu {run.ncu_status}: {run.ncu_reason}")
        if run.run_id in latency:
            _put(row, "latency_s", mean_ci(latency[run.run_id]), "lower")
        pair = by_treatment.loc[run.run_id] if row["role"] == "treatment" else None
        if pair is not None:
            row.update(baseline_run_id=pair.baseline_run_id, pair_status=pair.status, pair_reason=pair.reason)
        if pair is not None and pair.status == "ok":
            base = by_id.loc[pair.baseline_run_id]
            row["n_samples"] = f"{len(latency[base.name])} vs {len(latency[run.run_id])}"
            _put(row, "latency_overhead_pct", percent_change_ci(latency[base.name], latency[run.run_id]), "lower")
            _put(row, "throughput_change_pct",
                 percent_change_ci(throughput[base.name], throughput[run.run_id]), "higher")
            row["dram_write_reduction_pct"] = _point_reduction(base.dram_bytes_write, run.dram_bytes_write)
            row["dram_write_saved_bytes"] = (base.dram_bytes_write - run.dram_bytes_write
                                             if pd.notna(row["dram_write_reduction_pct"]) else math.nan)
            if pd.isna(row["dram_write_reduction_pct"]):
                row["dram_reason"] = first_present(row["dram_reason"], f"baseline {base.name}: ncu "
                                                   f"{base.ncu_status}: {base.ncu_reason}")
        rows.append(row)
    columns = ["label", "role", "confidence_threshold", "run_id", "status", "reason", "baseline_run_id",
               "pair_status", "pair_reason", "n_samples", "latency_s", "latency_s_ci_low", "latency_s_ci_high",
               "dram_bytes_write", "dram_write_saved_bytes", "dram_write_reduction_pct", "dram_reason",
               "tokens_stopped", "stop_pct", "early_exit_reason", "latency_overhead_pct",
               "latency_overhead_pct_ci_low", "latency_overhead_pct_ci_high", "latency_overhead_pct_verdict",
               "throughput_change_pct", "throughput_change_pct_ci_low", "throughput_change_pct_ci_high",
               "throughput_change_pct_verdict", "temperature", "max_tokens", "feature_impl", "vllm"]
    return pd.DataFrame(rows).reindex(columns=columns)


def acceptance_correlation(adaptive: pd.DataFrame) -> Correlation:
    """Pearson r between a workload's baseline acceptance rate and its latency reduction % (paired rows)."""
    ok = adaptive[(adaptive.status == "ok") & adaptive.baseline_draft_acceptance_rate.notna()]
    return correlation_ci(ok.baseline_draft_acceptance_rate.astype(float),
                          ok.latency_reduction_pct.astype(float))


def key_numbers(frames, adaptive: pd.DataFrame, early_exit: pd.DataFrame, determinism: pd.DataFrame, *,
                level: str = "batch") -> pd.DataFrame:
    """Every number the write-up quotes, one per row: key, value, 95 % CI, verdict, n and how it was computed.

    Averages over workloads are unweighted means of per-workload percent changes; their CI resamples every
    workload's samples (`mean_percent_change_ci`). Workloads that were not measured are named in `basis`.

    Raises:
        ValueError: `level` is not "batch" or "request".
    """
    latency, throughput = _samples_by_run(frames, level)
    ok, skipped = adaptive[adaptive.status == "ok"], adaptive[adaptive.status != "ok"]
    left_out = "; ".join(f"{r.label} left out ({r.reason})" for r in skipped.itertuples()) or "none left out"
    how = f"per-{level} samples, {N_RESAMPLES} bootstrap resamples, seed {SEED}"
    rows = []

    def add(key, quantity, estimate, better, basis, n=None, verdict_text=None):
        rows.append({"key": key, "quantity": quantity, "value": estimate.value, "ci_low": estimate.ci_low,
                     "ci_high": estimate.ci_high, "verdict": verdict_text or verdict(estimate, better),
                     "n": n or f"{estimate.n_baseline} vs {estimate.n_treatment}", "basis": basis})

    for key, samples, sign in (("latency_reduction_pct", latency, -1), ("throughput_improvement_pct", throughput, 1)):
        if len(ok):
            estimate = mean_percent_change_ci([(samples[r.baseline_run_id], samples[r.treatment_run_id])
                                               for r in ok.itertuples()])
            add(f"adaptive.mean.{key}", f"adaptive: {key}, mean of {len(ok)} workloads",
                estimate.negated() if sign < 0 else estimate, "higher",
                f"unweighted mean of per-workload changes; {how}; {left_out}")
    add("adaptive.mean.draft_token_reduction_pct", f"adaptive: draft_token_reduction_pct, mean of {len(ok)} workloads",
        Estimate(float(ok.draft_token_reduction_pct.mean()) if len(ok) else math.nan,
                 note="no CI: spec_num_draft_tokens is one counter per run"), "higher",
        f"mean of per-workload (1 - adaptive1/adaptive0) x 100 on spec_num_draft_tokens; {left_out}",
        n=f"{len(ok)} workloads")
    for r in adaptive.itertuples():
        add(f"adaptive.W{r.workload_number}.latency_reduction_pct", f"adaptive: latency_reduction_pct, {r.label}",
            Estimate(r.latency_reduction_pct, r.latency_reduction_pct_ci_low, r.latency_reduction_pct_ci_high,
                     note=first_present(r.reason)), "higher", f"{r.baseline_run_id} vs {r.treatment_run_id}; {how}",
            n=first_present(r.n_samples, "-"))
    corr = acceptance_correlation(adaptive)
    add("adaptive.correlation_r", "adaptive: Pearson r, baseline acceptance rate vs latency_reduction_pct",
        Estimate(corr.r, corr.ci_low, corr.ci_high, note=corr.note), "higher",
        f"bootstrap over workloads; p = {corr.p_value:.3f} from scipy.stats.pearsonr", n=f"{corr.n} workloads",
        verdict_text=corr.note or ("inside the noise (CI includes 0)" if corr.ci_low <= 0 <= corr.ci_high
                                   else "correlated (CI excludes 0)"))
    for r in early_exit[early_exit.role == "treatment"].itertuples():
        what = f"early exit threshold {r.confidence_threshold}, {r.label}"
        key = f"early_exit.{r.label.replace(' ', '_')}.threshold{r.confidence_threshold}"
        pair_note, n = first_present(r.pair_reason, r.reason), first_present(r.n_samples, "-")
        add(f"{key}.dram_write_reduction_pct", f"{what}: dram_write_reduction_pct",
            Estimate(r.dram_write_reduction_pct, note=first_present(
                pair_note, r.dram_reason, "no CI: ncu gives one region total per run")), "higher",
            f"{r.baseline_run_id} vs {r.run_id}; dram__bytes_write.sum from ncu", n="1 vs 1")
        add(f"{key}.stop_pct", f"{what}: tokens stopped %", Estimate(r.stop_pct, note=first_present(
            r.reason, r.early_exit_reason, "no CI: one counter per run")), "higher",
            "early_exit.stop_pct from the early-exit instrumentation", n="1 run")
        add(f"{key}.latency_overhead_pct", f"{what}: latency_overhead_pct",
            Estimate(r.latency_overhead_pct, r.latency_overhead_pct_ci_low, r.latency_overhead_pct_ci_high,
                     note=pair_note), "lower", f"{r.baseline_run_id} vs {r.run_id}; {how}", n=n)
    differs = determinism[determinism.status == "differs"]
    compared = int(determinism.status.isin(["identical", "differs"]).sum())
    add("determinism.pairs_differing", "determinism: temperature-0 pairs whose outputs differ",
        Estimate(float(len(differs))), "higher",
        "; ".join(f"{r.treatment_run_id}: {r.reason}" for r in differs.itertuples())
        or "output_hashes compared request by request", n=f"{compared} pairs compared",
        verdict_text="finding: investigate" if len(differs) else "all identical")
    not_ok = frames.runs[frames.runs.status != "ok"]
    add("runs.not_measured", "runs not measured", Estimate(float(len(not_ok))), "higher",
        "; ".join(f"{r.run_id}: {r.reason}" for r in not_ok.itertuples()) or "all ok",
        n=f"{len(frames.runs)} runs", verdict_text="see basis" if len(not_ok) else "none")
    return pd.DataFrame(rows)
