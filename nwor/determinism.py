"""Determinism at temperature 0: speculative decoding is lossless there, so paired runs' outputs must match."""
from __future__ import annotations

import pandas as pd

from nwor.analysis import Frames
from nwor.pairing import pair_adaptive, pair_early_exit


def count_differing(base: dict, treat: dict) -> tuple[int, int]:
    """(compared, differing) outputs of two runs, given {batch: [output hash, ...]} for each.

    Outputs are matched by batch and position (both runs see the same prompts in the same order); a
    request missing from one side of a batch both runs measured counts as differing. Batches only one run
    measured are not compared: designs measure different numbers of batches per arm.
    """
    compared = differ = 0
    for batch in sorted(set(base) & set(treat)):
        b, t = base.get(batch, []), treat.get(batch, [])
        compared += max(len(b), len(t))
        differ += sum(x != y for x, y in zip(b, t)) + abs(len(b) - len(t))
    return compared, differ


def differing_slots(base: pd.DataFrame, treat: pd.DataFrame) -> tuple[int, bool] | None:
    """(distinct prompt slots that differ, whether every engine instance agrees) for two runs' batches.

    A slot is one request position of one round: every engine instance of a run sees the same prompts in the
    same round. "Agrees" means each run gave the same outputs in every instance, so a difference between the
    runs is repeatable (the configuration's numerics, e.g. bf16 near-ties under another verification shape),
    not engine-to-engine nondeterminism. None when the batches carry no instance/round (older results).
    """
    if base.empty or treat.empty or base[["instance", "round"]].isna().any().any() \
            or treat[["instance", "round"]].isna().any().any():
        return None
    per_round = [{r: {tuple(h) for h in runs.output_hashes} for r, runs in frame.groupby("round")}
                 for frame in (base, treat)]
    agrees = all(len(outputs) == 1 for side in per_round for outputs in side.values())
    slots = set()
    for r in set(per_round[0]) & set(per_round[1]):
        for b, t in ((b, t) for b in per_round[0][r] for t in per_round[1][r]):
            slots |= {(r, i) for i, (x, y) in enumerate(zip(b, t)) if x != y}
            slots |= {(r, i) for i in range(min(len(b), len(t)), max(len(b), len(t)))}
    return len(slots), agrees


def compare_outputs(a: dict, b: dict) -> dict:
    """How many requests of two result documents produced different outputs, e.g. adaptive 0 vs 1 at T=0."""
    hashes = [{r["batch"]: r["output_hashes"] for r in doc.get("results") or []} for doc in (a, b)]
    compared, differ = count_differing(*hashes)
    return {"run_ids": [a.get("run_id"), b.get("run_id")], "n_requests": compared, "n_differ": differ,
            "identical": differ == 0 and compared > 0}


def _differ_reason(batches: pd.DataFrame, pair, compared: int, differ: int) -> str:
    reason = f"{differ} of {compared} outputs differ at temperature 0"
    slots = differing_slots(batches[batches.run_id == pair.baseline_run_id],
                            batches[batches.run_id == pair.treatment_run_id])
    if slots is None:
        return reason
    n_slots, agrees = slots
    several = batches[batches.run_id.isin([pair.baseline_run_id, pair.treatment_run_id])].instance.nunique() > 1
    how = ("; each run's outputs are the same in all its engines: repeatable, not engine-to-engine noise"
           if agrees and several else "; a run's engines disagree: engine-to-engine nondeterminism" if not agrees
           else "")
    return f"{reason} ({n_slots} distinct prompt slots{how})"


def check_determinism(frames: Frames) -> pd.DataFrame:
    """Compare `output_hashes` of every temperature-0 pair of runs (adaptive on/off, threshold vs 0.0).

    One row per pair with `n_requests`, `n_differ` and a `status`: "identical", "differs" (a finding),
    "not required" (temperature > 0) or the pair's own status when a side was not measured or the two runs come
    from different machines ("not comparable": another GPU may round near-ties differently).
    """
    hashes = frames.batches.set_index(["run_id", "batch"]).output_hashes if len(frames.batches) else None
    rows = []
    for grid, pairs in (("adaptive_grid", pair_adaptive(frames.runs)),
                        ("early_exit_grid", pair_early_exit(frames.runs))):
        for _, pair in pairs.iterrows():
            row = {"grid": grid, "label": pair.label, "baseline_run_id": pair.baseline_run_id,
                   "treatment_run_id": pair.treatment_run_id, "temperature": pair.temperature,
                   "n_requests": None, "n_differ": None, "status": pair.status, "reason": pair.reason}
            if pair.status == "ok" and pair.temperature != 0.0:
                row.update(status="not required",
                           reason=f"temperature {pair.temperature} > 0: sampled outputs may differ")
            elif pair.status == "ok":
                compared, differ = count_differing(hashes.loc[pair.baseline_run_id].to_dict(),
                                                   hashes.loc[pair.treatment_run_id].to_dict())
                row.update(n_requests=compared, n_differ=differ, status="differs" if differ else "identical",
                           reason=_differ_reason(frames.batches, pair, compared, differ) if differ else None)
            rows.append(row)
    return pd.DataFrame(rows, columns=["grid", "label", "baseline_run_id", "treatment_run_id", "temperature",
                                       "n_requests", "n_differ", "status", "reason"])
