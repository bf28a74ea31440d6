"""Pairing runs across run ids: which result is the baseline of which (adaptive off/on, threshold 0.0/> 0).

Used where a run carries no baseline arm of its own (older results) and for the determinism check, which
compares the outputs of two runs. Two runs from different known machines are "not comparable" (nwor.machines).
"""
from __future__ import annotations

import pandas as pd

from nwor.machines import NOT_COMPARABLE, different_machines


def _pair_row(base: pd.DataFrame, treat: pd.DataFrame, what: str, want_id: str | None) -> dict:
    row = {"baseline_run_id": base.run_id.iloc[0] if len(base) == 1 else None,
           "treatment_run_id": treat.run_id.iloc[0] if len(treat) == 1 else None, "status": "ok", "reason": None}
    expected = f" (expected {want_id})" if want_id else ""
    if len(base) != 1:
        row.update(status="unpaired", reason=f"{len(base) or 'no'} baseline run(s) ({what})")
    elif len(treat) != 1:
        row.update(status="unpaired", reason=f"{len(treat) or 'no'} treatment run(s) ({what}){expected}")
    elif want_id is not None and row["treatment_run_id"] != want_id:
        row.update(status="unpaired", reason=f"treatment {row['treatment_run_id']} is not {want_id}")
    else:
        for role, frame in (("baseline", base), ("treatment", treat)):
            if frame.status.iloc[0] != "ok":
                row.update(status="not measured", reason=f"{role} {frame.run_id.iloc[0]} {frame.reason.iloc[0]}")
    if row["status"] == "ok" and "machine" in base and "machine" in treat:
        why = different_machines(base.machine.iloc[0], treat.machine.iloc[0])
        if why:
            row.update(status=NOT_COMPARABLE, reason=why)
    return row


def pair_adaptive(runs: pd.DataFrame) -> pd.DataFrame:
    """Pair each adaptive-grid workload's adaptive0 (baseline) and adaptive1 (treatment) runs.

    Pairs by `workload_number` (the JSON's `workload.number`, else the run id) and checks that the
    treatment's id is the baseline's with `_adaptive0` replaced by `_adaptive1`. Every workload gets one
    row; `status` is "ok", "unpaired", "not measured" or "not comparable" (the runs come from different
    machines), and `reason` says why when it is not ok.
    """
    grid = runs[runs.grid == "adaptive_grid"]
    rows = []
    for number, group in grid.groupby("workload_number", dropna=False, sort=True):
        base, treat = group[group.adaptive == False], group[group.adaptive == True]  # noqa: E712 (NaN-safe)
        base_id = base.run_id.iloc[0] if len(base) == 1 else ""
        want = base_id.replace("_adaptive0", "_adaptive1") if "_adaptive0" in base_id else None
        pair = _pair_row(base, treat, f"adaptive on/off of workload {number}", want)
        first = group.iloc[0]
        rows.append({"workload_number": number, "label": first.label, "temperature": first.temperature, **pair})
    return pd.DataFrame(rows, columns=["workload_number", "label", "temperature", "baseline_run_id",
                                       "treatment_run_id", "status", "reason"])


def pair_early_exit(runs: pd.DataFrame) -> pd.DataFrame:
    """Pair each early-exit run with threshold > 0 with the threshold-0.0 run of equal tokens and temperature.

    A run without such a baseline (e.g. run7 at t256) gets status "unpaired" and the reason; none is invented.
    A baseline from another machine is "not comparable".
    """
    grid = runs[runs.grid == "early_exit_grid"]
    baselines = grid[grid.confidence_threshold == 0.0]
    rows = []
    for _, run in grid[~(grid.confidence_threshold == 0.0)].iterrows():
        base = baselines[(baselines.max_tokens == run.max_tokens) & (baselines.temperature == run.temperature)
                         & (baselines.num_prompts == run.num_prompts)]
        what = (f"threshold 0.0 with max_tokens={run.max_tokens}, temperature={run.temperature}, "
                f"num_prompts={run.num_prompts}")
        pair = _pair_row(base, grid[grid.run_id == run.run_id], what, None)
        rows.append({"label": run.label, "confidence_threshold": run.confidence_threshold,
                     "temperature": run.temperature, **pair, "treatment_run_id": run.run_id})
    return pd.DataFrame(rows, columns=["label", "confidence_threshold", "temperature", "baseline_run_id",
                                       "treatment_run_id", "status", "reason"])
