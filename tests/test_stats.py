"""Tests for nwor.stats: hand-computed cases, verdicts, and coverage of the intervals on simulated experiments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nwor import arms, stats

EXACT = 1e-9  # tolerance for hand-computed percentages: only float rounding may differ
# Coverage checks: N_EXPERIMENTS simulated experiments per case, each with its own bootstrap of
# COVERAGE_RESAMPLES draws. At 95 % nominal the binomial s.d. of the observed rate is 1.1 points, so
# +-COVERAGE_TOLERANCE (3.2 s.d.) fails a correct method about once in 700 runs of a fresh seed; the seeds
# below are fixed, so the test is deterministic.
N_EXPERIMENTS = 400
COVERAGE_RESAMPLES = 1000
COVERAGE_TOLERANCE = 0.035


def simulate(rng, *, instances: int, batches: int, between_sd: float, within_sd: float, change: float,
             paired: bool):
    """One experiment: batch latencies around 1.0 s with an engine effect and batch noise; the treatment arm
    is `change` (relative) slower. Paired arms share their engines (within-engine design)."""
    engines_b = rng.normal(0, between_sd, instances)
    engines_t = engines_b if paired else rng.normal(0, between_sd, instances)
    baseline = [1.0 + e + rng.normal(0, within_sd, batches) for e in engines_b]
    treatment = [(1.0 + change) * (1.0 + e) + rng.normal(0, within_sd, batches) for e in engines_t]
    return baseline, treatment


def coverage(seed: int, batch_only: bool = False, **case) -> tuple[float, float | None]:
    """(hierarchical, batch-only or None) share of experiments whose 95 % interval covers the true change."""
    rng, truth = np.random.default_rng(seed), 100 * case["change"]
    hits = hits_batch = 0
    for i in range(N_EXPERIMENTS):
        baseline, treatment = simulate(rng, **case)
        estimate = stats.change_ci(baseline, treatment, paired=case["paired"], n_resamples=COVERAGE_RESAMPLES,
                                   seed=i)
        assert estimate.instance_aware
        hits += estimate.ci_low <= truth <= estimate.ci_high
        if not batch_only:
            continue
        _, low, high = stats.batch_change_ci(np.concatenate(baseline), np.concatenate(treatment),
                                             n_resamples=COVERAGE_RESAMPLES, seed=i)
        hits_batch += low <= truth <= high
    return hits / N_EXPERIMENTS, hits_batch / N_EXPERIMENTS if batch_only else None


def test_engines_interleaved_interval_covers_at_its_nominal_rate_and_batch_only_does_not():
    # Engines differ by 8 % (s.d.), batches by 1 %: the regime issue 11 measured on the H100.
    hierarchical, batch_only = coverage(11, True, instances=4, batches=10, between_sd=0.08, within_sd=0.01, change=0.05,
                                        paired=False)
    assert hierarchical == pytest.approx(0.95, abs=COVERAGE_TOLERANCE)
    assert batch_only < 0.6  # observed ~0.35: batches alone cannot see the engine-to-engine spread


def test_within_engine_interval_covers_at_its_nominal_rate():
    # The same engines carry both arms, so their spread cancels; three engines are enough.
    hierarchical, _ = coverage(12, instances=3, batches=10, between_sd=0.08, within_sd=0.01, change=0.05,
                               paired=True)
    assert hierarchical == pytest.approx(0.95, abs=COVERAGE_TOLERANCE)


def test_interval_stays_nominal_when_batch_noise_dominates():
    # Resampling batches inside resampled engines counts batch noise twice; the t scaling must undo that.
    hierarchical, _ = coverage(13, instances=4, batches=10, between_sd=0.005, within_sd=0.05, change=0.05,
                               paired=False)
    assert hierarchical == pytest.approx(0.95, abs=COVERAGE_TOLERANCE)


def test_hand_computed_reduction_is_ten_percent_with_a_point_ci():
    estimate = stats.change_ci([[1, 1, 1], [1, 1]], [[0.9, 0.9], [0.9, 0.9, 0.9]]).negated()
    assert estimate.value == pytest.approx(10.0, abs=EXACT)
    assert estimate.ci_low == pytest.approx(10.0, abs=EXACT) and estimate.ci_high == pytest.approx(10.0, abs=EXACT)
    assert (estimate.instances_baseline, estimate.n_baseline, estimate.method) == (2, 5, stats.HIERARCHICAL)
    assert arms.verdict(estimate) == "improvement"


def test_each_engine_instance_counts_once():
    # instance means 1.0 and 2.0 -> 1.5, although the second instance has three times the batches
    assert stats.relative_change([[1.0], [1.0]], [[1.0], [2.0, 2.0, 2.0]]) == pytest.approx(50.0, abs=EXACT)


def test_bootstrap_is_reproducible_and_depends_on_the_seed():
    rng = np.random.default_rng(1)
    b, t = [rng.normal(1.0, 0.05, 8) for _ in range(3)], [rng.normal(0.95, 0.05, 8) for _ in range(3)]
    assert stats.change_ci(b, t) == stats.change_ci(b, t)
    assert stats.change_ci(b, t, seed=1).ci_low != stats.change_ci(b, t, seed=2).ci_low


def test_one_engine_instance_gives_no_verdict_and_says_why():
    estimate = stats.change_ci([[1.0, 1.1, 0.9]], [[0.8, 0.85, 0.9]])
    assert estimate.method == stats.BATCH_ONLY and estimate.has_ci  # the batch interval is still shown
    assert "1 engine instance(s) per arm" in estimate.note
    assert arms.verdict(estimate).startswith("no verdict: 1 engine instance")


def test_paired_arms_must_share_their_instances():
    with pytest.raises(ValueError, match="paired"):
        stats.change_ci([[1.0], [1.0]], [[1.0], [1.0], [1.0]], paired=True)


def test_pairing_removes_the_engine_spread():
    rng = np.random.default_rng(3)
    baseline, treatment = simulate(rng, instances=4, batches=10, between_sd=0.1, within_sd=0.005, change=0.03,
                                   paired=True)
    paired, unpaired = stats.change_ci(baseline, treatment, paired=True), stats.change_ci(baseline, treatment)
    assert paired.ci_high - paired.ci_low < (unpaired.ci_high - unpaired.ci_low) / 5
    assert paired.ci_low > 0 and unpaired.ci_low < 0 < unpaired.ci_high


@pytest.mark.parametrize("low, high, better, band, expected", [
    (1, 2, "higher", None, "improvement"), (-2, -1, "higher", None, "regression"),
    (1, 2, "lower", None, "regression"), (-2, -1, "lower", None, "improvement"),
    (-1, 1, "higher", None, arms.NOISE), (0, 1, "higher", None, arms.NOISE),
    (1, 2, "higher", (-1.5, 1.5), arms.NOT_ESTABLISHED), (1, 2, "higher", (-0.5, 0.5), "improvement"),
    (-1, 1, "higher", (-0.5, 0.5), arms.NOISE)])
def test_verdict(low, high, better, band, expected):
    estimate = stats.Estimate((low + high) / 2, low, high, method=stats.HIERARCHICAL)
    assert arms.verdict(estimate, better, band) == expected


def test_verdict_rejects_unknown_direction():
    with pytest.raises(ValueError, match="better"):
        arms.verdict(stats.Estimate(1, 0, 2, method=stats.HIERARCHICAL), "sideways")


@pytest.mark.parametrize("baseline, treatment", [([], [[1.0]]), ([[]], [[1.0]]), ([[0.0, 0.0]], [[1.0, 1.0]]),
                                                 ([[1.0, math.nan]], [[1.0]])])
def test_change_rejects_bad_input(baseline, treatment):
    with pytest.raises(ValueError):
        stats.change_ci(baseline, treatment)


def test_mean_ci_of_one_arm_is_about_the_t_interval_of_its_instance_means():
    estimate = stats.mean_ci([[2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [3.0, 3.0]])
    assert estimate.value == pytest.approx(3.0, abs=EXACT)
    half_width = 3.182 * np.std([2, 3, 4, 3], ddof=1) / 2  # t(0.975, 3) x s / sqrt(4)
    # the bootstrap of 4 instances has a lumpy distribution: its percentiles sit within 15 % of t's
    assert estimate.ci_high - estimate.ci_low == pytest.approx(2 * half_width, rel=0.15)
    assert stats.mean_ci([[2.5, 2.5]]).note == "no CI: 1 engine instance"


def test_mean_over_workloads_weights_workloads_equally():
    groups = [([[1, 1], [1, 1]], [[0.9, 0.9], [0.9, 0.9]], True),
              ([[2] * 6, [2] * 6], [[1.6] * 6, [1.6] * 6], False)]
    estimate = stats.mean_change_ci(groups).negated()
    assert estimate.value == pytest.approx(15.0, abs=EXACT)  # (10 + 20) / 2, not weighted by sample count
    assert estimate.ci_low == pytest.approx(15.0, abs=EXACT) and estimate.ci_high == pytest.approx(15.0, abs=EXACT)
    assert stats.mean_change_ci(groups + [([[1.0]], [[1.0]], False)]).note.startswith("no CI: 1 group(s)")


def test_correlation():
    perfect = stats.correlation_ci([1, 2, 3, 4], [2, 4, 6, 8])
    assert perfect.r == pytest.approx(1.0, abs=EXACT) and perfect.ci_low == pytest.approx(1.0, abs=EXACT)
    assert math.isnan(stats.correlation_ci([1, 1, 1], [1, 2, 3]).r)
    assert "need 3" in stats.correlation_ci([1, 2], [1, 2]).note
