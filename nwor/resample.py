"""Building blocks of nwor.stats' hierarchical bootstrap: checked samples, two-stage draws (instances, then
batches within each), the Student-t scaling of the draws and the percentile interval."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

_CHUNK_VALUES = 2_000_000  # resampled values held in memory at once (~16 MB of float64)

Instances = Sequence[Sequence[float]]  # one sequence of batch values per engine instance


def _samples(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values: {array.tolist()}")
    return array


def _instances(instances: Instances, name: str) -> list[np.ndarray]:
    if len(instances) == 0:
        raise ValueError(f"{name} has no engine instances")
    return [_samples(batches, f"{name} instance {i}") for i, batches in enumerate(instances)]


def _mean_of_instances(instances: list[np.ndarray]) -> float:
    # Each engine instance counts once: the engine, not the batch, is the unit of replication.
    return float(np.mean([batches.mean() for batches in instances]))


def _padded(instances: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([b.size for b in instances])
    values = np.zeros((len(instances), counts.max()))
    for i, batches in enumerate(instances):
        values[i, :batches.size] = batches
    return values, counts


def _two_stage_means(values: np.ndarray, counts: np.ndarray, picked: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Mean of instance means for each row of `picked` (drawn instance indices), batches redrawn within each."""
    out = np.empty(picked.shape[0])
    width = values.shape[1]
    step = max(1, _CHUNK_VALUES // (picked.shape[1] * width))
    for start in range(0, picked.shape[0], step):
        rows = picked[start:start + step]  # (r, n)
        n_drawn = counts[rows]  # batches available in each drawn instance
        batch = (rng.random(rows.shape + (width,)) * n_drawn[..., None]).astype(np.intp)
        kept = np.arange(width) < n_drawn[..., None]  # draw as many batches as the instance has
        drawn = np.where(kept, values[rows[..., None], batch], 0.0)
        out[start:start + step] = (drawn.sum(axis=-1) / n_drawn).mean(axis=-1)
    return out


def _scaled(draws: np.ndarray, value: float, variance: float, df: float, confidence: float) -> np.ndarray:
    """Hierarchical draws widened around `value` to Student's t on the instance means.

    Resampling few engines sees a variance (n-1)/n too small and a normal tail where t applies, so it
    under-covers; resampling batches again inside each drawn engine counts batch noise twice (over-covering
    when batches dominate). Scaling the draws' spread to the variance of the estimate from instance means,
    at t(df), keeps the bootstrap's shape and gives nominal coverage (tests/test_stats.py simulates it).
    """
    spread = float(np.std(draws))
    if spread == 0 or variance == 0:
        return np.full_like(draws, value)
    t = scipy_stats.t.ppf(0.5 + confidence / 2, df)
    return value + t * math.sqrt(variance) / (scipy_stats.norm.ppf(0.5 + confidence / 2) * spread) * (draws - value)


def _ratio_variance(means_b: np.ndarray, means_t: np.ndarray, paired: bool) -> tuple[float, float]:
    """(variance, degrees of freedom) of 100 * mean(means_t) / mean(means_b) by the delta method.

    Paired: d_i = T_i - R B_i over shared instances, df = n - 1. Unpaired: Welch-Satterthwaite.
    """
    b, t = means_b.mean(), means_t.mean()
    ratio = t / b
    if paired:
        return 1e4 * float(np.var(means_t - ratio * means_b, ddof=1)) / means_b.size / b ** 2, means_b.size - 1
    part_t = float(np.var(means_t, ddof=1)) / means_t.size
    part_b = ratio ** 2 * float(np.var(means_b, ddof=1)) / means_b.size
    if part_t + part_b == 0:
        return 0.0, 1.0
    df = (part_t + part_b) ** 2 / (part_t ** 2 / (means_t.size - 1) + part_b ** 2 / (means_b.size - 1))
    return 1e4 * (part_t + part_b) / b ** 2, df


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)
