"""The controls grid's analysis (issue 14): faster than what? Per workload, the mean batch latency of every arm
(no speculation, static K, the adaptive controller, vLLM's Dynamic SD) with instance-aware intervals, the best
static K (a tie is a tie: every K whose interval overlaps the best's), and the statements the report makes,
each judged against the A/A band of its design.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from nwor import stats
from nwor.analysis import Frames
from nwor.arms import Samples, aa_band, change, comparison_design, describe, verdict
from nwor.machines import NOT_COMPARABLE, different_machines, machine_of, shared_machine

GRID = "controls_grid"
DYNAMIC_SUFFIX = "_dynamic_sd"
STATIC_ARM = re.compile(r"^k(?P<k>\d+)$")
NO_RESULTS = "no controls results (the opt-in `controls_grid` was not run for this profile)"
LATENCY_COLUMNS = ["workload", "label", "run_id", "arm", "control", "k", "mean_latency_s", "ci_low", "ci_high",
                   "instances", "batches", "method", "best", "tied_with_best"]
STATEMENT_COLUMNS = ["workload", "label", "statement", "reference", "treatment", "design", "latency_change_pct",
                     "ci_low", "ci_high", "verdict", "band", "instances", "note"]
# (statement, reference arm, treatment arm); "best" is the workload's best static K, "dynamic" Dynamic SD's run.
STATEMENTS = (("best static K vs no speculation", "nospec", "best"),
              ("adaptive vs best static K", "best", "adaptive"),
              ("adaptive vs no speculation", "nospec", "adaptive"),
              ("Dynamic SD vs best static K", "best", "dynamic"),
              ("Dynamic SD vs no speculation", "nospec", "dynamic"),
              ("Dynamic SD vs adaptive", "dynamic_adaptive", "dynamic"))


def workload_of(run_id: str) -> str:
    """The workload id a controls run measures: `controls_<id>` and `controls_<id>_dynamic_sd` share it."""
    return run_id.removeprefix("controls_").removesuffix(DYNAMIC_SUFFIX)


def control_of(run_id: str, arm: str) -> tuple[str, int | None]:
    """(control, K) of an arm: nospec, static (with K), adaptive, or dynamic_sd."""
    if run_id.endswith(DYNAMIC_SUFFIX):
        return ("adaptive", None) if arm == "run" else ("dynamic_sd", None) if arm == "dynamic_sd" else ("other", None)
    if arm == "run":
        return "adaptive", None
    if arm == "nospec":
        return "nospec", None
    match = STATIC_ARM.match(arm)
    return ("static", int(match["k"])) if match else ("other", None)


def pick_best_k(rows: list[dict]) -> tuple[int | None, list[int]]:
    """The static K of lowest mean latency and every K tied with it (their intervals overlap the best's).

    Args:
        rows: {"k", "mean_latency_s", "ci_low", "ci_high"} per static K; a row without an interval is tied
            only if its mean lies inside the best's interval (without any interval, nothing ties).
    """
    usable = [r for r in rows if r["mean_latency_s"] is not None and not math.isnan(r["mean_latency_s"])]
    if not usable:
        return None, []
    best = min(usable, key=lambda r: (r["mean_latency_s"], r["k"]))

    def overlaps(r: dict) -> bool:
        if r is best:
            return True
        if any(math.isnan(v) for v in (best["ci_low"], best["ci_high"])):
            return False
        low, high = (r["ci_low"], r["ci_high"]) if not math.isnan(r["ci_low"]) else (r["mean_latency_s"],) * 2
        return low <= best["ci_high"] and best["ci_low"] <= high

    return best["k"], sorted(r["k"] for r in usable if overlaps(r))


def _label(run: pd.Series) -> str:
    number = run.get("workload_number")
    name = run.get("workload_name") or workload_of(run.run_id)
    return f"W{number} {name}" if pd.notna(number) else str(name)


def controls_runs(frames: Frames) -> pd.DataFrame:
    """The controls grid's rows of `frames.runs` (empty when the grid was not run)."""
    runs = frames.runs
    return runs[runs.grid == GRID] if "grid" in runs else runs.iloc[0:0]


def arm_latencies(frames: Frames, samples: Samples | None = None) -> pd.DataFrame:
    """Mean batch latency of every arm of every ok controls run, with its instance-aware interval.

    `best` marks the workload's best static K, `tied_with_best` every static K whose interval overlaps it.
    """
    samples = samples or Samples(frames.arm_batches)
    rows = []
    for _, run in controls_runs(frames)[lambda r: r.status == "ok"].iterrows():
        for arm in run.arms:
            values = samples.values(run.run_id, arm, "latency_s")
            if not values:
                continue
            est = stats.mean_ci(values)
            control, k = control_of(run.run_id, arm)
            rows.append({"workload": workload_of(run.run_id), "label": _label(run), "run_id": run.run_id, "arm": arm,
                         "control": control, "k": k, "mean_latency_s": est.value, "ci_low": est.ci_low,
                         "ci_high": est.ci_high, "instances": est.instances_treatment, "batches": est.n_treatment,
                         "method": est.method, "best": False, "tied_with_best": False})
    frame = pd.DataFrame(rows, columns=LATENCY_COLUMNS)
    for workload, group in frame[frame.control == "static"].groupby("workload"):
        best, tied = pick_best_k(group.to_dict("records"))
        static = (frame.workload == workload) & (frame.control == "static")
        frame.loc[static & (frame.k == best), "best"] = True
        frame.loc[static & frame.k.isin(tied), "tied_with_best"] = True
    frame["k"] = frame.k.astype("Int64")
    return frame


def best_k(latencies: pd.DataFrame) -> pd.DataFrame:
    """Per workload: the best static K and the Ks tied with it."""
    rows = []
    for workload, group in latencies[latencies.control == "static"].groupby("workload", sort=False):
        best = group[group.best]
        rows.append({"workload": workload, "label": group.label.iloc[0],
                     "best_k": int(best.k.iloc[0]) if len(best) else None,
                     "tied_ks": sorted(int(k) for k in group[group.tied_with_best].k),
                     "best_mean_latency_s": float(best.mean_latency_s.iloc[0]) if len(best) else None})
    return pd.DataFrame(rows, columns=["workload", "label", "best_k", "tied_ks", "best_mean_latency_s"])


def _arm_ref(latencies: pd.DataFrame, workload: str, which: str) -> tuple[str, str] | None:
    mine = latencies[latencies.workload == workload]
    pick = {"nospec": mine.control == "nospec", "best": mine.best,
            "adaptive": (mine.control == "adaptive") & ~mine.run_id.str.endswith(DYNAMIC_SUFFIX),
            "dynamic": mine.control == "dynamic_sd",
            "dynamic_adaptive": (mine.control == "adaptive") & mine.run_id.str.endswith(DYNAMIC_SUFFIX)}[which]
    hit = mine[pick]
    return (hit.run_id.iloc[0], hit.arm.iloc[0]) if len(hit) else None


def statements(frames: Frames, aa: pd.DataFrame, latencies: pd.DataFrame | None = None) -> pd.DataFrame:
    """The report's statements per workload: latency change % of treatment vs reference, interval, verdict.

    A negative change is faster. Verdicts use the instance-aware interval and the A/A band of the
    comparison's design (arms of one run: engines-interleaved; Dynamic SD vs the sweep's arms: across runs).
    A Dynamic SD run that did not measure (refused on a build without it, failed) gives its reason instead, and
    one from another machine than the sweep's is "not comparable" (its band would be the wrong machine's too).
    """
    samples, machines = Samples(frames.arm_batches), machine_of(frames.runs)
    latencies = arm_latencies(frames, samples) if latencies is None else latencies
    runs = controls_runs(frames)
    rows = []
    for workload in dict.fromkeys(latencies.workload):
        label = latencies[latencies.workload == workload].label.iloc[0]
        dynamic_run = runs[runs.run_id == f"controls_{workload}{DYNAMIC_SUFFIX}"]
        for statement, ref_name, treat_name in STATEMENTS:
            ref, treat = _arm_ref(latencies, workload, ref_name), _arm_ref(latencies, workload, treat_name)
            row = dict.fromkeys(STATEMENT_COLUMNS)
            row.update(workload=workload, label=label, statement=statement)
            if ref is None or treat is None:
                missing = treat_name if treat is None else ref_name
                why = (dynamic_run.reason.iloc[0] if "dynamic" in missing and len(dynamic_run)
                       and dynamic_run.status.iloc[0] != "ok" else f"no {missing} arm measured")
                row.update(verdict=f"not available: {why}")
                rows.append(row)
                continue
            design, paired = comparison_design(samples, ref, treat)
            row.update(reference=f"{ref[0]}:{ref[1]}", treatment=f"{treat[0]}:{treat[1]}", design=design)
            ref_machine, treat_machine = machines.get(ref[0]), machines.get(treat[0])
            elsewhere = different_machines(ref_machine, treat_machine)
            if elsewhere:
                row.update(verdict=f"{NOT_COMPARABLE}: {elsewhere}")
            else:
                est = change(samples, ref, treat)["latency"]
                band, band_text = aa_band(aa, design, "latency", shared_machine(ref_machine, treat_machine))
                row.update(latency_change_pct=est.value, ci_low=est.ci_low, ci_high=est.ci_high,
                           verdict=verdict(est, "lower", band), band=band_text, instances=describe(est, paired),
                           note=est.note)
            rows.append(row)
    return pd.DataFrame(rows, columns=STATEMENT_COLUMNS)


def schedules(frames: Frames, outputs_root: str | Path) -> pd.DataFrame:
    """The Dynamic SD schedule each dynamic run measured, how it was tuned and from which sweep runs."""
    rows = []
    for _, run in controls_runs(frames).iterrows():
        if not run.run_id.endswith(DYNAMIC_SUFFIX) or run.status != "ok":
            continue
        tuning = json.loads((Path(outputs_root) / run.path).read_text()).get("dynamic_sd") or {}
        rows.append({"workload": workload_of(run.run_id), "schedule": tuning.get("schedule"),
                     "chosen_k_by_batch_size": tuning.get("chosen_k"), "extended_below": tuning.get("extended_below"),
                     "sources": ", ".join(tuning.get("sources") or []), "rule": tuning.get("rule")})
    return pd.DataFrame(rows, columns=["workload", "schedule", "chosen_k_by_batch_size", "extended_below",
                                       "sources", "rule"])


def summary(latencies: pd.DataFrame, said: pd.DataFrame) -> str:
    """Markdown: one line per workload (best K, ties, adaptive vs best K), or `NO_RESULTS`."""
    if latencies.empty:
        return NO_RESULTS
    lines = []
    for _, b in best_k(latencies).iterrows():
        row = said[(said.workload == b.workload) & (said.statement == "adaptive vs best static K")]
        versus = "adaptive vs best K: not measured"
        if len(row) and pd.notna(row.latency_change_pct.iloc[0]):
            r = row.iloc[0]
            versus = (f"adaptive vs K={b.best_k}: {r.latency_change_pct:+.1f}% latency "
                      f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}], {r.verdict}")
        elif len(row):
            versus = f"adaptive vs best K: {row.verdict.iloc[0]}"
        ties = ", ".join(map(str, b.tied_ks))
        lines.append(f"- **{b.label}**: best static K = {b.best_k} (tied: K in {{{ties}}}); {versus}")
    return "\n".join(lines)


def tables(said: pd.DataFrame, schedule: pd.DataFrame) -> list[pd.DataFrame]:
    """The tables worth showing: the statements, then the Dynamic SD schedules; none when both are empty."""
    return [t for t in (said, schedule) if not t.empty]
