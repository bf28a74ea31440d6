"""vLLM's Dynamic SD schedule (`num_speculative_tokens_per_batch_size`) built from nwor's static-K sweep.

The rule is vLLM's own tuner (`vllm/benchmarks/sweep/tune_speculative_k.py`), restated: per batch size and
K, the median objective over runs (here: engine instances) minus `UNCERTAINTY_PENALTY` x 1.4826 x MAD; per
batch size, every K within `RELATIVE_TOLERANCE` of the best counts as best and the smallest such K is taken;
consecutive batch-size anchors become inclusive ranges, equal neighbours merged. Records come from the
controls grid's sweep runs (`controls_*`, arms `k<K>`): batch size = the run's requests per batch (all
requests run together), objective = output tokens/s of each engine instance's measured batches of that arm.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from nwor.config import RunSpec
from nwor.errors import ConfigError

TUNED = "tuned"
FIELD = "num_speculative_tokens_per_batch_size"
MIN_RUNS = 2  # vLLM's default is 3; the smoke profile has 2 engine instances per arm (GPU profiles: 3)
UNCERTAINTY_PENALTY = 1.0  # vLLM's default
RELATIVE_TOLERANCE = 0.01  # vLLM's default: within 1 % of the best is as good, and the smaller K wins
MAX_RELATIVE_MAD = 0.1  # vLLM refuses above this; here such a candidate is kept and flagged "unstable"
SOURCE = "vllm/benchmarks/sweep/tune_speculative_k.py rule (maximize output tokens/s), restated in nwor.dynamic_sd"


def checked_schedule(schedule, speculative: bool):
    """A RunSpec's schedule as tuples: None, "tuned", or vLLM's rule (int triples, sorted, disjoint, from 1).

    Raises:
        ConfigError: anything else, or a schedule without speculation.
    """
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"invalid {FIELD}={schedule!r}: {message}", field=FIELD, value=schedule)

    if schedule is None:
        return None
    check(speculative, "Dynamic SD needs speculation (method eagle or ngram)")
    if isinstance(schedule, str):
        check(schedule == TUNED, 'must be "tuned" or a list of [batch_start, batch_end, K]')
        return schedule
    shape = "must be a non-empty list of [batch_start, batch_end, K] (1 <= start <= end, K >= 0)"
    check(isinstance(schedule, (list, tuple)) and bool(schedule), shape)
    schedule = tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in schedule)
    ints = lambda e: all(isinstance(v, int) and not isinstance(v, bool) for v in e)  # noqa: E731
    check(all(isinstance(e, tuple) and len(e) == 3 and ints(e) and 1 <= e[0] <= e[1] and e[2] >= 0
              for e in schedule), shape)
    check(schedule[0][0] == 1 and all(b[0] > a[1] for a, b in zip(schedule, schedule[1:])),
          "ranges must start at batch size 1, sorted and non-overlapping")
    return schedule


def median_mad(values: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation)."""
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


def aggregate(records: list[dict], *, min_runs: int = MIN_RUNS, penalty: float = UNCERTAINTY_PENALTY) -> list[dict]:
    """One measurement per (batch_size, k): runs, median, MAD, conservative objective, unstable flag.

    Args:
        records: {"batch_size", "k", "objective"} each, objective to maximize (> 0).

    Raises:
        ValueError: no records, a non-positive objective, or a cell with fewer than `min_runs` runs.
    """
    cells: dict[tuple[int, int], list[float]] = {}
    for r in records:
        if not r["objective"] > 0:
            raise ValueError(f"objective must be > 0, got {r['objective']!r} "
                             f"(batch size {r['batch_size']}, K {r['k']})")
        cells.setdefault((int(r["batch_size"]), int(r["k"])), []).append(float(r["objective"]))
    if not cells:
        raise ValueError("no sweep measurements")
    out = []
    for (batch_size, k), values in sorted(cells.items()):
        if len(values) < min_runs:
            raise ValueError(f"batch size {batch_size}, K {k}: {len(values)} runs, at least {min_runs} needed")
        med, mad = median_mad(values)
        out.append({"batch_size": batch_size, "k": k, "runs": len(values), "median_objective": med,
                    "mad_objective": mad, "conservative_objective": max(med - penalty * 1.4826 * mad, 0.0),
                    "unstable": mad / med > MAX_RELATIVE_MAD})
    return out


def select_k(measurements: list[dict], *, relative_tolerance: float = RELATIVE_TOLERANCE,
             fallbacks: list | None = None) -> dict[int, int]:
    """batch size -> chosen K: the smallest K whose conservative objective is within tolerance of the best.

    Where every conservative objective of a batch size is 0 (instances disagree by more than the penalty
    allows; vLLM's tuner stops there), the medians decide instead and the batch size is appended to
    `fallbacks`, so the result says so.

    Raises:
        ValueError: batch sizes measured with different K candidates, or no positive objective.
    """
    by_batch: dict[int, list[dict]] = {}
    for m in measurements:
        by_batch.setdefault(m["batch_size"], []).append(m)
    candidates = {b: sorted(m["k"] for m in ms) for b, ms in by_batch.items()}
    if len({tuple(c) for c in candidates.values()}) > 1:
        raise ValueError(f"batch sizes were swept over different K candidates: {candidates}")
    chosen = {}
    for batch_size, ms in sorted(by_batch.items()):
        basis = "conservative_objective"
        if max(m[basis] for m in ms) <= 0 and fallbacks is not None:
            basis = "median_objective"
            fallbacks.append(batch_size)
        best = max(m[basis] for m in ms)
        if best <= 0:
            raise ValueError(f"batch size {batch_size}: no positive conservative objective")
        chosen[batch_size] = min(m["k"] for m in ms if m[basis] >= best * (1 - relative_tolerance))
    return chosen


def build_schedule(chosen: dict[int, int], max_batch_size: int | None = None) -> list[list[int]]:
    """Inclusive [start, end, K] ranges: each anchor to the next anchor - 1, the last to `max_batch_size`.

    vLLM's tuner needs an anchor at batch size 1; nwor's sweep has none, so the smallest anchor's K also
    covers the batch sizes below it (said in the tuning record as `extended_below`).

    Raises:
        ValueError: no anchors, or `max_batch_size` below the largest anchor.
    """
    anchors = sorted(chosen)
    if not anchors:
        raise ValueError("no batch sizes to build a schedule from")
    top = anchors[-1] if max_batch_size is None else max_batch_size
    if top < anchors[-1]:
        raise ValueError(f"max_batch_size {top} is below the largest tuned batch size {anchors[-1]}")
    schedule: list[list[int]] = []
    for i, start in enumerate(anchors):
        end = anchors[i + 1] - 1 if i + 1 < len(anchors) else top
        start = 1 if i == 0 else start
        if schedule and schedule[-1][2] == chosen[anchors[i]]:
            schedule[-1][1] = end
        else:
            schedule.append([start, end, chosen[anchors[i]]])
    return schedule


def tune(records: list[dict], sources: list[str]) -> dict:
    """The schedule and how it was chosen (recorded in the result as `dynamic_sd`).

    Raises:
        ValueError: see `aggregate`, `select_k`, `build_schedule`.
    """
    measurements, fallbacks = aggregate(records), []
    chosen = select_k(measurements, fallbacks=fallbacks)
    return {"schedule": build_schedule(chosen), "chosen_k": {str(b): k for b, k in chosen.items()},
            "extended_below": min(chosen) > 1, "rule": SOURCE, "median_fallback_batch_sizes": fallbacks,
            "settings": {"objective": "output_tokens_per_s per engine instance", "direction": "maximize",
                         "min_runs": MIN_RUNS, "uncertainty_penalty": UNCERTAINTY_PENALTY,
                         "relative_tolerance": RELATIVE_TOLERANCE, "max_relative_mad": MAX_RELATIVE_MAD},
            "measurements": measurements, "sources": sources}


def is_static(settings: dict) -> bool:
    """An arm of plain static K: EAGLE, no controller, no early exit, no schedule."""
    return (settings.get("method") == "eagle" and not settings.get("adaptive_draft_length")
            and not settings.get("confidence_threshold") and settings.get(FIELD) is None)


def sweep_records(doc: dict) -> list[dict]:
    """Tuner records of one sweep result: (batch size, K, output tokens/s) per static arm and instance."""
    spec = doc.get("spec") or {}
    arms = {a["name"]: {**spec, **{k: v for k, v in a.items() if k in spec}}
            for a in (doc.get("design") or {}).get("arms") or []}
    records = []
    for replicate in doc.get("replicates") or []:
        for name, settings in arms.items():
            batches = [b for b in replicate.get("batches") or [] if b["arm"] == name]
            if is_static(settings) and batches:
                tokens, seconds = sum(b["num_output_tokens"] for b in batches), sum(b["latency_s"] for b in batches)
                records.append({"batch_size": spec["num_requests"], "k": settings["num_speculative_tokens"],
                                "objective": tokens / seconds, "run_id": doc["run_id"], "arm": name})
    return records


def uses_tuned(spec: RunSpec) -> bool:
    return spec.num_speculative_tokens_per_batch_size == TUNED or any(
        a.get(FIELD) == TUNED for a in spec.arms)


def resolve_tuned(spec: RunSpec, folder: str | Path | None) -> tuple[RunSpec, dict | None]:
    """`spec` with every "tuned" schedule replaced by the one built from the sweep runs in `folder`.

    Each arm given the schedule also gets num_speculative_tokens = its largest K (vLLM caps the schedule at
    num_speculative_tokens). Returns (spec, None) when nothing asks for "tuned".

    Raises:
        ConfigError: no folder, no usable sweep result in it, or the sweep cannot be tuned.
    """
    if not uses_tuned(spec):
        return spec, None
    if folder is None or not Path(folder).is_dir():
        raise ConfigError(f"run {spec.run_id}: a tuned Dynamic SD schedule needs the grid's outputs folder")
    records, sources = [], []
    for path in sorted(Path(folder).glob("controls_*.json")):
        doc = json.loads(path.read_text())
        if doc.get("status") == "ok" and doc.get("run_id") != spec.run_id and not uses_tuned_doc(doc):
            found = sweep_records(doc)
            records += found
            sources += [doc["run_id"]] if found else []
    if not records:
        raise ConfigError(f"run {spec.run_id}: no static-K sweep result in {Path(folder).name}/ yet to tune Dynamic "
                          "SD from (run the controls_* sweep runs first)")
    try:
        tuning = tune(records, sources)
    except ValueError as err:
        raise ConfigError(f"run {spec.run_id}: Dynamic SD schedule: {err}") from None
    schedule, k_max = tuple(tuple(e) for e in tuning["schedule"]), max(e[2] for e in tuning["schedule"])
    given = {FIELD: schedule, "num_speculative_tokens": k_max}
    arms = tuple({**a, **given} if a.get(FIELD) == TUNED else a for a in spec.arms)
    top = given if spec.num_speculative_tokens_per_batch_size == TUNED else {}
    return replace(spec, arms=arms, **top), tuning


def uses_tuned_doc(doc: dict) -> bool:
    """A result whose spec asked for a tuned schedule (a Dynamic SD run, not a sweep)."""
    spec = doc.get("spec") or {}
    return spec.get(FIELD) == TUNED or any(a.get(FIELD) == TUNED for a in spec.get("arms") or [])
