"""The pinned-acceptance sweep of controller_grid: per acceptance level, the latency of each static K, the
latency-optimal static K, and the length the adaptive controller chose (nwor.synthetic pins the acceptance).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from nwor import stats
from nwor.analysis import arm_batches, read_run
from nwor.arms import Samples
from nwor.errors import SchemaError

ARM_COLUMNS = ["run_id", "acceptance_pinned", "arm", "num_speculative_tokens", "adaptive", "mean_latency_s",
               "acceptance_measured", "mean_draft_length", "instances", "batches"]
LEVEL_COLUMNS = ["run_id", "acceptance_pinned", "acceptance_measured", "best_static_k", "best_static_latency_s",
                 "adaptive_mean_draft_length", "adaptive_vs_best_static_latency_pct",
                 "adaptive_vs_best_static_latency_pct_ci_low", "adaptive_vs_best_static_latency_pct_ci_high",
                 "method", "note"]


def _mean_length(histogram: dict | None) -> float | None:
    if not histogram:
        return None
    steps = sum(histogram.values())
    return sum(int(k) * v for k, v in histogram.items()) / steps if steps else None


def arm_rows(doc: dict) -> list[dict]:
    """One row per arm of a pinned-acceptance run (none for other runs)."""
    spec = doc.get("spec") or {}
    if spec.get("synthetic_acceptance_rate") is None or doc.get("status") != "ok":
        return []
    settings = {a["name"]: a for a in (doc.get("design") or {}).get("arms") or []}
    batches = pd.DataFrame(arm_batches(doc))
    rows = []
    for arm, setting in settings.items():
        counts = [r["counters"][arm] for r in doc.get("replicates") or [] if arm in (r.get("counters") or {})]
        drafted = sum(c.get("num_draft_tokens") or 0 for c in counts)
        accepted = sum(c.get("num_accepted_tokens") or 0 for c in counts)
        histogram: dict = {}
        for c in counts:
            for k, v in ((c.get("plugin") or {}).get("draft_length_histogram") or {}).items():
                histogram[k] = histogram.get(k, 0) + v
        mine = batches[batches.arm == arm] if not batches.empty else batches
        rows.append({"run_id": doc["run_id"], "acceptance_pinned": spec["synthetic_acceptance_rate"], "arm": arm,
                     "num_speculative_tokens": setting.get("num_speculative_tokens", spec["num_speculative_tokens"]),
                     "adaptive": setting.get("adaptive_draft_length", spec["adaptive_draft_length"]),
                     "mean_latency_s": float(mine.latency_s.mean()) if len(mine) else None,
                     "acceptance_measured": accepted / drafted if drafted else None,
                     "mean_draft_length": _mean_length(histogram), "instances": mine.instance.nunique(),
                     "batches": len(mine)})
    return rows


def sweep(outputs_root: str | Path, profile: str, grid: str = "controller_grid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-arm rows, per-level summary) of a profile's pinned-acceptance runs; both empty when there are none.

    The summary compares the adaptive arm ("run") with the fastest static arm by `nwor.stats.change_ci`:
    latency change % from that static K to adaptive, positive when adaptive is slower (instance-aware when
    each arm has enough engine instances, else batches only, as `method` says).
    """
    docs, rows = [], []
    for path in sorted((Path(outputs_root) / profile / grid).glob("*.json")):
        try:
            doc = read_run(path)
        except SchemaError:
            continue
        found = arm_rows(doc)
        if found:
            docs.append(doc)
            rows += found
    arms = pd.DataFrame(rows, columns=ARM_COLUMNS)
    levels = []
    samples = Samples(pd.DataFrame([b for d in docs for b in arm_batches(d)])) if docs else None
    for run_id, group in arms.groupby("run_id", sort=False):
        static = group[~group.adaptive.astype(bool) & group.mean_latency_s.notna()]
        adaptive = group[group.adaptive.astype(bool)]
        best = static.loc[static.mean_latency_s.idxmin()] if not static.empty else None
        row = {"run_id": run_id, "acceptance_pinned": group.acceptance_pinned.iloc[0],
               "acceptance_measured": static.acceptance_measured.mean() if not static.empty else None,
               "best_static_k": None if best is None else int(best.num_speculative_tokens),
               "best_static_latency_s": None if best is None else best.mean_latency_s,
               "adaptive_mean_draft_length": adaptive.mean_draft_length.iloc[0] if len(adaptive) else None,
               "method": None, "note": None}
        estimate = None
        if best is not None and len(adaptive):
            estimate = stats.change_ci(samples.values(run_id, best.arm, "latency_s"),
                                       samples.values(run_id, adaptive.arm.iloc[0], "latency_s"))
        row.update({"adaptive_vs_best_static_latency_pct": estimate.value if estimate else math.nan,
                    "adaptive_vs_best_static_latency_pct_ci_low": estimate.ci_low if estimate else math.nan,
                    "adaptive_vs_best_static_latency_pct_ci_high": estimate.ci_high if estimate else math.nan,
                    "method": estimate.method if estimate else None,
                    "note": estimate.note if estimate else "no adaptive or static arm measured"})
        levels.append(row)
    return arms, pd.DataFrame(levels, columns=LEVEL_COLUMNS).sort_values("acceptance_pinned", ignore_index=True)
