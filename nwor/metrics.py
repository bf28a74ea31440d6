"""Reading vLLM's counters and per-request timings, and the arithmetic that turns them into metrics."""
from __future__ import annotations

import math

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)  # vllm bench's set plus p95, which the seed reported
SPEC_PREFIX = "vllm:spec_decode_"


def snapshot(llm) -> dict:
    """Counter and vector values from `llm.get_metrics()`, summed over label sets (engines)."""
    out: dict = {}
    for metric in llm.get_metrics():
        if hasattr(metric, "values"):  # Vector, e.g. accepted tokens per position
            prev = out.get(metric.name, [])
            vals = list(metric.values)
            out[metric.name] = [a + b for a, b in zip(vals, prev + [0] * (len(vals) - len(prev)))]
        elif hasattr(metric, "value"):
            out[metric.name] = out.get(metric.name, 0) + metric.value
    return out


def diff(before: dict, after: dict) -> dict:
    """after - before for every counter and vector present in `after`."""
    out = {}
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, list):
            old = old or [0] * len(value)
            out[name] = [a - b for a, b in zip(value, old + [0] * (len(value) - len(old)))]
        else:
            out[name] = value - (old or 0)
    return out


def spec_decode_metrics(delta: dict) -> dict:
    """vLLM's speculative-decoding numbers over a window; null (not 0) when nothing was drafted."""
    drafts = delta.get(SPEC_PREFIX + "num_drafts")
    draft_tokens = delta.get(SPEC_PREFIX + "num_draft_tokens")
    accepted = delta.get(SPEC_PREFIX + "num_accepted_tokens")
    per_pos = delta.get(SPEC_PREFIX + "num_accepted_tokens_per_pos")
    has = drafts is not None and drafts > 0
    return {
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "num_accepted_tokens_per_pos": per_pos,
        "draft_acceptance_rate": accepted / draft_tokens if has and draft_tokens else None,
        "mean_acceptance_length": 1 + accepted / drafts if has else None,
        "mean_accepted_per_draft": accepted / drafts if has else None,
        "acceptance_rate_per_pos": [p / drafts for p in per_pos] if has and per_pos else None,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no data."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def describe(values: list[float], name: str, unit: str = "s") -> dict:
    """mean_<name>_<unit> and p<q>_<name>_<unit> for every percentile."""
    data = [v for v in values if v is not None]
    out = {f"mean_{name}_{unit}": sum(data) / len(data) if data else None}
    for q in PERCENTILES:
        out[f"p{q}_{name}_{unit}"] = percentile(data, q)
    return out


def request_timings(output) -> dict:
    """TTFT, TPOT, end-to-end and queue time of one finished request, from vLLM's RequestStateStats.

    `first_token_latency` is measured from arrival; the other timestamps are the engine core's
    monotonic clock, so durations are taken between them only.
    """
    stats = getattr(output, "metrics", None)
    if stats is None:
        return {"ttft_s": None, "tpot_s": None, "e2e_s": None, "queue_s": None, "is_corrupted": None}
    ttft = stats.first_token_latency or None
    n = stats.num_generation_tokens
    decode = stats.last_token_ts - stats.first_token_ts if stats.last_token_ts and stats.first_token_ts else None
    return {
        "ttft_s": ttft,
        "tpot_s": decode / (n - 1) if decode is not None and n > 1 else None,
        "e2e_s": ttft + decode if ttft is not None and decode is not None else None,
        "queue_s": stats.scheduled_ts - stats.queued_ts if stats.scheduled_ts and stats.queued_ts else None,
        "is_corrupted": bool(getattr(stats, "is_corrupted", False)),
    }


def add(total: dict, delta: dict) -> dict:
    """total + delta for every counter and vector (vectors elementwise, padded with zeros)."""
    out = dict(total)
    for name, value in delta.items():
        old = out.get(name)
        if isinstance(value, list):
            old = old or []
            width = max(len(old), len(value))
            out[name] = [a + b for a, b in zip(old + [0] * (width - len(old)), value + [0] * (width - len(value)))]
        else:
            out[name] = (old or 0) + value
    return out


def add_plugin_stats(total: dict | None, stats: dict) -> dict:
    """Sum nwor-plugin counters of several batches (each read after the configure that zeroed them)."""
    total = total or {"tokens_stopped": 0, "checks": 0, "steps": 0, "draft_length_histogram": {}}
    histogram = dict(total["draft_length_histogram"])
    for length, steps in stats.get("draft_length_histogram", {}).items():
        histogram[int(length)] = histogram.get(int(length), 0) + steps
    tokens_stopped = total["tokens_stopped"] + (stats.get("tokens_stopped") or 0)
    checks = total["checks"] + (stats.get("checks") or 0)
    return {"tokens_stopped": tokens_stopped, "checks": checks, "steps": total["steps"] + (stats.get("steps") or 0),
            "stop_pct": 100.0 * tokens_stopped / checks if checks else None,
            "draft_length_histogram": dict(sorted(histogram.items()))}
