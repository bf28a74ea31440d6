"""Pure statistics: instance-aware (hierarchical) bootstrap intervals of relative changes and means, correlation.

Samples come as one sequence of batch values per engine instance. Engines differ from each other by more
than batches differ within one engine (issue 11 measured 30 % between two fresh engines of one
configuration), so an interval that resamples batches alone is too narrow: every interval here resamples
instances first, then batches within each drawn instance. Every function draws from its own
`numpy.random.default_rng(seed)`, so re-rendering a report reproduces every interval exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from nwor.resample import (Instances, _instances, _interval, _mean_of_instances, _padded, _ratio_variance,
                           _samples, _scaled, _two_stage_means)

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 20261127  # fixed so that re-rendering a report reproduces every interval exactly
MIN_SAMPLES = 2  # a bootstrap of one sample is a point, which would look like certainty
# Between-engine variance needs two engines to be seen at all; with one the interval is batch noise only.
MIN_INSTANCES = 2
HIERARCHICAL = "hierarchical bootstrap (instances, then batches), scaled to Student t on instance means"
BATCH_ONLY = "batch-only bootstrap (between-engine variance not captured)"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval, the method and the counts it rests on.

    `n_*` count batches, `instances_*` engine instances; `note` says why an interval or verdict is missing.
    """

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_baseline: int = 0
    n_treatment: int = 0
    instances_baseline: int = 0
    instances_treatment: int = 0
    method: str = ""
    note: str | None = None

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.ci_low) or math.isnan(self.ci_high))

    @property
    def instance_aware(self) -> bool:
        return self.method == HIERARCHICAL

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


def relative_change(baseline: Instances, treatment: Instances) -> float:
    """`100 * (m(treatment) - m(baseline)) / m(baseline)`, m = the mean over instances of each one's batch mean.

    Raises:
        ValueError: no instances, an empty instance, non-finite values, or a baseline mean of 0.
    """
    b, t = _mean_of_instances(_instances(baseline, "baseline")), _mean_of_instances(_instances(treatment, "treatment"))
    if b == 0:
        raise ValueError("baseline mean is 0; a relative change is undefined")
    return 100 * (t - b) / b


def _change_draws(baseline: Instances, treatment: Instances, paired: bool, rng: np.random.Generator,
                  n_resamples: int, confidence: float) -> tuple[Estimate, np.ndarray | None]:
    """The point change and its expanded hierarchical draws (None, with a note, when too few instances)."""
    b, t = _instances(baseline, "baseline"), _instances(treatment, "treatment")
    value = relative_change(b, t)
    counts = dict(n_baseline=sum(x.size for x in b), n_treatment=sum(x.size for x in t),
                  instances_baseline=len(b), instances_treatment=len(t))
    if paired and len(b) != len(t):
        raise ValueError(f"paired arms need the same instances, got {len(b)} and {len(t)}")
    if min(len(b), len(t)) < MIN_INSTANCES:
        return Estimate(value, **counts, method=BATCH_ONLY, note=(
            f"{min(len(b), len(t))} engine instance(s) per arm (need {MIN_INSTANCES}): between-engine "
            "variance not measured")), None
    (vb, cb), (vt, ct) = _padded(b), _padded(t)
    picked_b = rng.integers(0, len(b), size=(n_resamples, len(b)))
    picked_t = picked_b if paired else rng.integers(0, len(t), size=(n_resamples, len(t)))
    draws_b, draws_t = _two_stage_means(vb, cb, picked_b, rng), _two_stage_means(vt, ct, picked_t, rng)
    draws = 100 * (draws_t - draws_b) / draws_b
    variance, df = _ratio_variance(np.array([x.mean() for x in b]), np.array([x.mean() for x in t]), paired)
    return Estimate(value, **counts, method=HIERARCHICAL), _scaled(draws, value, variance, df, confidence)


def change_ci(baseline: Instances, treatment: Instances, *, paired: bool = False, n_resamples: int = N_RESAMPLES,
              seed: int = SEED, confidence: float = CONFIDENCE) -> Estimate:
    """Relative change % of the mean from baseline to treatment, with an instance-aware interval.

    Args:
        baseline, treatment: one sequence of batch values per engine instance.
        paired: True for a within-engine design: instance i of both arms is the same engine, so instances
            are drawn once for both arms (engine-to-engine variance cancels), batches per arm.

    With fewer than `MIN_INSTANCES` instances on a side, the interval resamples batches only and the
    estimate says so in `method` and `note` (`verdict` then gives none).

    Raises:
        ValueError: bad samples, a baseline mean of 0, or paired arms of unequal instance counts.
    """
    rng = np.random.default_rng(seed)
    estimate, draws = _change_draws(baseline, treatment, paired, rng, n_resamples, confidence)
    if draws is None:
        flat_b = np.concatenate([np.asarray(x, float) for x in baseline])
        flat_t = np.concatenate([np.asarray(x, float) for x in treatment])
        if min(flat_b.size, flat_t.size) < MIN_SAMPLES:
            return estimate
        low, high = batch_change_ci(flat_b, flat_t, n_resamples=n_resamples, seed=seed, confidence=confidence)[1:3]
        return replace(estimate, ci_low=low, ci_high=high)
    low, high = _interval(draws, confidence)
    return replace(estimate, ci_low=low, ci_high=high)


def batch_change_ci(baseline, treatment, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(change %, low, high) from pooled batches resampled independently, ignoring which engine ran them.

    Kept as the comparison the tests need: it undercovers whenever engines differ (issue 11).

    Raises:
        ValueError: empty input, non-finite values, or a baseline mean of 0.
    """
    b, t = _samples(baseline, "baseline"), _samples(treatment, "treatment")
    if b.mean() == 0:
        raise ValueError("baseline mean is 0; a relative change is undefined")
    rng = np.random.default_rng(seed)
    b_means = b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(axis=1)
    t_means = t[rng.integers(0, t.size, size=(n_resamples, t.size))].mean(axis=1)
    return (float(100 * (t.mean() - b.mean()) / b.mean()),
            *_interval(100 * (t_means - b_means) / b_means, confidence))


def mean_ci(instances: Instances, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
            confidence: float = CONFIDENCE) -> Estimate:
    """The mean of instance means of one arm, with a hierarchical interval (none below 2 instances).

    Raises:
        ValueError: no instances, an empty instance, or non-finite values.
    """
    x = _instances(instances, "values")
    value, n = _mean_of_instances(x), sum(b.size for b in x)
    if len(x) < MIN_INSTANCES:
        return Estimate(value, n_treatment=n, instances_treatment=len(x), method=BATCH_ONLY,
                        note=f"no CI: {len(x)} engine instance")
    rng = np.random.default_rng(seed)
    draws = _two_stage_means(*_padded(x), rng.integers(0, len(x), size=(n_resamples, len(x))), rng)
    means = np.array([b.mean() for b in x])
    low, high = _interval(_scaled(draws, value, float(np.var(means, ddof=1)) / len(x), len(x) - 1, confidence),
                          confidence)
    return Estimate(value, low, high, 0, n, 0, len(x), HIERARCHICAL)


def mean_change_ci(groups: Sequence[tuple[Instances, Instances, bool]], *, n_resamples: int = N_RESAMPLES,
                   seed: int = SEED, confidence: float = CONFIDENCE) -> Estimate:
    """The unweighted mean over groups (workloads) of each group's relative change, with an interval.

    Each group is (baseline, treatment, paired). Each draw averages every group's expanded hierarchical
    draw, so workloads count equally and each carries its own engine and batch noise. Any group with too
    few instances leaves the mean without an interval.

    Raises:
        ValueError: no groups, or a group that `change_ci` rejects.
    """
    if not groups:
        raise ValueError("mean_change_ci needs at least one (baseline, treatment, paired) group")
    rng = np.random.default_rng(seed)
    parts = [_change_draws(b, t, paired, rng, n_resamples, confidence) for b, t, paired in groups]
    value = float(np.mean([estimate.value for estimate, _ in parts]))
    counts = {key: sum(getattr(e, key) for e, _ in parts) for key in
              ("n_baseline", "n_treatment", "instances_baseline", "instances_treatment")}
    short = [e.note for e, draws in parts if draws is None]
    if short:
        return Estimate(value, **counts, method=BATCH_ONLY, note=f"no CI: {len(short)} group(s): {short[0]}")
    low, high = _interval(np.mean([draws for _, draws in parts], axis=0), confidence)
    return Estimate(value, low, high, **counts, method=HIERARCHICAL)


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
