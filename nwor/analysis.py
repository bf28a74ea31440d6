"""Load a profile's result JSONs into tidy frames, pair runs, and compute the numbers the report quotes.

Frames: `runs` (one row per run, failed/refused/missing ones with their reason), `batches` (`results[]`),
`requests` (`requests[]`). Comparisons carry bootstrap CIs from `nwor.stats`.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from nwor.stats import first_present
from nwor.errors import SchemaError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "refused")
DRAM_WRITE = "dram__bytes_write.sum"
INT_COLUMNS = ("workload_number", "num_prompts", "max_tokens", "num_speculative_tokens", "n_batches",
               "spec_num_draft_tokens", "num_drafts", "num_draft_tokens", "num_accepted_tokens", "tokens_stopped",
               "early_exit_checks")
ADAPTIVE_ID = re.compile(r"^run(?P<workload_number>\d+)_r(?P<num_prompts>\d+)_t(?P<max_tokens>\d+)"
                         r"_temp(?P<temperature>\d+(?:\.\d+)?)_d(?P<num_speculative_tokens>\d+)"
                         r"_adaptive(?P<adaptive>[01])$")
EARLY_EXIT_ID = re.compile(r"^run(?P<run_number>\d+)_r(?P<num_prompts>\d+)_t(?P<max_tokens>\d+)"
                           r"_temp(?P<temperature>\d+(?:\.\d+)?)_thresh(?P<confidence_threshold>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Frames:
    """The tidy frames of one profile: one row per run, per measured batch, per measured request."""

    runs: pd.DataFrame
    batches: pd.DataFrame
    requests: pd.DataFrame


def parse_run_id(run_id: str) -> dict:
    """Read the parameters an original-suite run id encodes; unknown ids give an empty dict.

    `run3_r36_t128_temp0.0_d10_adaptive1` -> workload_number 3, num_prompts 36, max_tokens 128,
    temperature 0.0, num_speculative_tokens 10, adaptive True.
    `run7_r36_t256_temp0.0_thresh0.5` -> num_prompts 36, max_tokens 256, temperature 0.0, threshold 0.5.
    """
    for pattern in (ADAPTIVE_ID, EARLY_EXIT_ID):
        match = pattern.match(run_id)
        if match:
            fields = {k: (float(v) if "." in v or k in ("temperature", "confidence_threshold") else int(v))
                      for k, v in match.groupdict().items()}
            fields.pop("run_number", None)
            if "adaptive" in fields:
                fields["adaptive"] = bool(fields["adaptive"])
            return fields
    return {}


def read_run(path: str | Path) -> dict:
    """Read one result JSON and check the parts of the schema the analysis relies on.

    Raises:
        SchemaError: unreadable JSON, another `schema_version`, an unknown status, a run id that is not
            the file name, or an `ok` run without `results`, `metrics` or `summary.per_mode[0]`.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SchemaError(f"{path}: not valid JSON ({err})", path=str(path)) from err
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema_version {doc.get('schema_version')!r}, this nwor reads "
                          f"{SCHEMA_VERSION}", path=str(path))
    if doc.get("status") not in STATUSES or doc.get("run_id") != path.stem:
        raise SchemaError(f"{path}: status {doc.get('status')!r} (allowed {STATUSES}) and run_id "
                          f"{doc.get('run_id')!r} must match the file name", path=str(path))
    if doc["status"] == "ok" and not (doc.get("results") and doc.get("metrics")
                                      and (doc.get("summary") or {}).get("per_mode")):
        raise SchemaError(f"{path}: an ok run needs results[], metrics and summary.per_mode[0]",
                          path=str(path))
    return doc


def _prefer(path: Path, what: str, from_json, from_id):
    # The JSON is the source of truth; the run id only fills gaps (e.g. failed runs have no results).
    if from_json is not None and from_id is not None and from_json != from_id:
        raise SchemaError(f"{path}: {what} is {from_json!r} in the JSON but {from_id!r} in the run id",
                          path=str(path))
    return from_json if from_json is not None else from_id


def _reason(doc: dict) -> str | None:
    error = doc.get("error") or {}
    if doc["status"] == "ok":
        return None
    return f"{doc['status']}: {error.get('type', 'unknown error')}: {error.get('message', '')}".strip()


def _label(row: dict) -> str:
    if row["grid"] == "adaptive_grid" and row["workload_number"] is not None:
        return f"W{row['workload_number']} {row['workload_name'] or ''}".strip()
    if row["grid"] == "early_exit_grid" and row["max_tokens"] is not None:
        return f"t{row['max_tokens']} temp{row['temperature']}"
    return row["run_id"]


def _run_row(doc: dict, path: Path) -> dict:
    ids, g = parse_run_id(doc["run_id"]), doc.get
    workload, features, env = g("workload") or {}, g("features") or {}, g("env") or {}
    requested, results = features.get("requested") or {}, g("results") or []
    sampling = results[0].get("sampling_params", {}) if results else {}
    metrics, mode = g("metrics") or {}, ((g("summary") or {}).get("per_mode") or [{}])[0]
    ncu, early_exit = g("ncu") or {}, g("early_exit") or {}
    dram = (mode.get("ncu_metrics") or {}).get(DRAM_WRITE, (ncu.get("totals") or {}).get(DRAM_WRITE))
    row = {"run_id": doc["run_id"], "grid": doc.get("grid"), "profile": doc.get("profile"),
           "status": doc["status"], "reason": _reason(doc), "path": str(path),
           "workload_number": _prefer(path, "workload number", workload.get("number"), ids.get("workload_number")),
           "workload_name": workload.get("name"),
           # Profiles scale requests and tokens (run ids keep the grid's nominal values): the JSON wins.
           "num_prompts": first_present(results[0]["num_requests"] if results else None, ids.get("num_prompts")),
           "max_tokens": first_present(sampling.get("max_tokens"), ids.get("max_tokens")),
           "temperature": _prefer(path, "temperature", sampling.get("temperature"), ids.get("temperature")),
           "num_speculative_tokens": (features.get("effective") or {}).get("num_speculative_tokens",
                                                                            ids.get("num_speculative_tokens")),
           "adaptive": _prefer(path, "adaptive", requested.get("adaptive_draft_length"), ids.get("adaptive")),
           "confidence_threshold": _prefer(path, "confidence threshold", requested.get("confidence_threshold"),
                                           ids.get("confidence_threshold")),
           "feature_impl": features.get("feature_impl"),
           "vllm": f"vLLM {env.get('vllm_version')} ({(features.get('capability') or {}).get('flavour')}, "
                   f"{env.get('vllm_platform')})",
           "n_batches": len(results), "latency_avg_s": mode.get("latency_avg_s"),
           "spec_num_draft_tokens": mode.get("spec_num_draft_tokens"),
           "ncu_status": ncu.get("status"), "ncu_reason": ncu.get("reason"), "dram_bytes_write": dram,
           "early_exit_status": early_exit.get("status"), "early_exit_reason": early_exit.get("reason"),
           "tokens_stopped": early_exit.get("tokens_stopped"), "early_exit_checks": early_exit.get("checks"),
           "stop_pct": early_exit.get("stop_pct")}
    for key in ("mean_latency_s", "p50_latency_s", "p99_latency_s", "output_tokens_per_s", "num_drafts",
                "num_draft_tokens", "num_accepted_tokens", "draft_acceptance_rate", "mean_acceptance_length",
                "acceptance_rate_per_pos"):
        row[key] = metrics.get(key)
    row["label"] = _label(row)
    return row


def load_profile(outputs_root: str | Path, profile: str,
                 expected: Mapping[str, Iterable[str]] | None = None) -> Frames:
    """Load every `<outputs_root>/<profile>/<grid>/*.json` into tidy frames.

    Args:
        outputs_root: the folder holding one folder per profile.
        profile: e.g. "smoke" or "full".
        expected: optional grid name -> run ids the grid plans; those without a JSON get a row with
            status "missing" so that they show in every table.

    Raises:
        SchemaError: a result file fails `read_run`, or its JSON and run id disagree.
        FileNotFoundError: the profile folder does not exist or holds no result JSON.
    """
    folder = Path(outputs_root) / profile
    # The ncu pass's own result (`<run_id>.ncu-pass.json`) sits beside the run's; it is not a run.
    paths = sorted(p for p in folder.glob("*/*.json") if not p.name.endswith(".ncu-pass.json"))
    if not paths:
        raise FileNotFoundError(f"no result JSONs under {folder}/<grid>/")
    runs, batches, requests = [], [], []
    for path in paths:
        doc = read_run(path)
        row = _run_row(doc, path)
        row["path"] = str(path.relative_to(folder.parent))  # no machine paths in shared reports
        runs.append(row)
        for result in doc.get("results") or []:
            batches.append({"run_id": doc["run_id"], "grid": doc.get("grid"),
                            **{k: v for k, v in result.items() if k not in ("outputs", "sampling_params")}})
        requests += [{"run_id": doc["run_id"], "grid": doc.get("grid"), **r} for r in doc.get("requests") or []]
    found = {(r["grid"], r["run_id"]) for r in runs}
    for grid, run_ids in (expected or {}).items():
        for run_id in run_ids:
            if (grid, run_id) not in found:
                fields = parse_run_id(run_id)
                row = {"run_id": run_id, "grid": grid, "profile": profile, "status": "missing",
                       "reason": f"missing: no {profile}/{grid}/{run_id}.json", "workload_name": None,
                       **{k: fields.get(k) for k in ("workload_number", "num_prompts", "max_tokens",
                                                     "temperature", "adaptive", "confidence_threshold")}}
                runs.append({**row, "label": _label(row)})
    logger.info("loaded %d runs, %d batches, %d requests from %s", len(runs), len(batches), len(requests), folder)
    runs = pd.DataFrame(runs)
    for column in INT_COLUMNS:
        # NaN-able integers, so that reasons print "max_tokens=256", not "256.0"
        runs[column] = runs.get(column, pd.Series(index=runs.index, dtype=float)).astype("Int64")
    dram = runs.get("dram_bytes_write", pd.Series(index=runs.index, dtype=float))
    runs["dram_bytes_write"] = pd.to_numeric(dram).astype(float)
    return Frames(runs, pd.DataFrame(batches), pd.DataFrame(requests))


def summary_table(frames: Frames) -> pd.DataFrame:
    """One row per run with its status, reason and headline measurements, in grid order."""
    columns = ["grid", "run_id", "label", "status", "reason", "adaptive", "confidence_threshold", "temperature",
               "max_tokens", "n_batches", "latency_avg_s", "output_tokens_per_s", "spec_num_draft_tokens",
               "draft_acceptance_rate", "dram_bytes_write", "stop_pct", "feature_impl", "vllm"]
    return frames.runs.reindex(columns=columns).sort_values(["grid", "run_id"], ignore_index=True)


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
    return row


def pair_adaptive(runs: pd.DataFrame) -> pd.DataFrame:
    """Pair each adaptive-grid workload's adaptive0 (baseline) and adaptive1 (treatment) runs.

    Pairs by `workload_number` (the JSON's `workload.number`, else the run id) and checks that the
    treatment's id is the baseline's with `_adaptive0` replaced by `_adaptive1`. Every workload gets one
    row; `status` is "ok", "unpaired" or "not measured", and `reason` says why when it is not ok.
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
    return pd.DataFrame(rows)


def pair_early_exit(runs: pd.DataFrame) -> pd.DataFrame:
    """Pair each early-exit run with threshold > 0 with the threshold-0.0 run of equal tokens and temperature.

    A run without such a baseline (e.g. run7 at t256) gets status "unpaired" and the reason; none is invented.
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
    return pd.DataFrame(rows)


def count_differing(base: dict, treat: dict) -> tuple[int, int]:
    """(compared, differing) outputs of two runs, given {batch: [output hash, ...]} for each.

    Outputs are matched by batch and position (both runs see the same prompts in the same order);
    a request present in one run only counts as differing.
    """
    compared = differ = 0
    for batch in sorted(set(base) | set(treat)):
        b, t = base.get(batch, []), treat.get(batch, [])
        compared += max(len(b), len(t))
        differ += sum(x != y for x, y in zip(b, t)) + abs(len(b) - len(t))
    return compared, differ


def compare_outputs(a: dict, b: dict) -> dict:
    """How many requests of two result documents produced different outputs, e.g. adaptive 0 vs 1 at T=0.

    Speculative decoding is lossless at temperature 0, so any difference there is a finding.
    """
    hashes = [{r["batch"]: r["output_hashes"] for r in doc.get("results") or []} for doc in (a, b)]
    compared, differ = count_differing(*hashes)
    return {"run_ids": [a.get("run_id"), b.get("run_id")], "n_requests": compared, "n_differ": differ,
            "identical": differ == 0 and compared > 0}


def check_determinism(frames: Frames) -> pd.DataFrame:
    """Compare `output_hashes` of every temperature-0 pair (adaptive on/off, threshold vs 0.0).

    One row per pair with `n_requests`, `n_differ` and a `status`: "identical", "differs" (a finding),
    "not required" (temperature > 0) or the pair's own status when a side was not measured.
    """
    hashes = frames.batches.set_index(["run_id", "batch"]).output_hashes if len(frames.batches) else None
    rows = []
    for grid, pairs in (("adaptive_grid", pair_adaptive(frames.runs)), ("early_exit_grid",
                                                                        pair_early_exit(frames.runs))):
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
                           reason=f"{differ} of {compared} outputs differ at temperature 0" if differ else None)
            rows.append(row)
    return pd.DataFrame(rows)


def acceptance_by_workload(frames: Frames, grid: str | None = None) -> pd.DataFrame:
    """Draft tokens and acceptance per run (every run, with status and reason), optionally for one grid."""
    runs = frames.runs if grid is None else frames.runs[frames.runs.grid == grid]
    return runs.reindex(columns=["grid", "label", "run_id", "status", "reason", "adaptive", "confidence_threshold",
                                 "spec_num_draft_tokens", "num_drafts", "draft_acceptance_rate",
                                 "mean_acceptance_length", "feature_impl", "vllm"]).reset_index(drop=True)


def acceptance_per_position(frames: Frames, grid: str | None = None) -> pd.DataFrame:
    """One row per (run, draft position) from `metrics.acceptance_rate_per_pos`; position counts from 1.

    A run without per-position rates (failed, refused, or null in the JSON) keeps one row with position
    NaN and its reason, so that figures can say what is missing.
    """
    runs = frames.runs if grid is None else frames.runs[frames.runs.grid == grid]
    rows = []
    for run in runs.itertuples():
        rates = run.acceptance_rate_per_pos if isinstance(run.acceptance_rate_per_pos, list) else [None]
        reason = first_present(run.reason, None if rates[0] is not None else "acceptance_rate_per_pos is null")
        rows += [{"grid": run.grid, "label": run.label, "run_id": run.run_id, "status": run.status,
                  "reason": reason, "adaptive": run.adaptive, "confidence_threshold": run.confidence_threshold,
                  "position": None if rate is None else i + 1, "acceptance_rate": rate,
                  "feature_impl": run.feature_impl, "vllm": run.vllm} for i, rate in enumerate(rates)]
    return pd.DataFrame(rows, columns=["grid", "label", "run_id", "status", "reason", "adaptive",
                                       "confidence_threshold", "position", "acceptance_rate", "feature_impl",
                                       "vllm"])


def report_dir(outputs_root: str | Path, profile: str) -> Path:
    """`<outputs_root>/<profile>/report`, where the report's figures go."""
    return Path(outputs_root) / profile / "report"


MAX_LATENCY_OVERHEAD_PCT = 2.0  # an early exit that may cost more latency than this is not worth its bandwidth


def _fmt(value, low=math.nan, high=math.nan) -> str:
    if pd.isna(value):
        return "n/a"
    return f"{value:+.1f}%" + ("" if pd.isna(low) else f" (95% CI {low:+.1f} to {high:+.1f})")


def _fmt_ci(row, name: str) -> str:
    return _fmt(getattr(row, name), getattr(row, f"{name}_ci_low"), getattr(row, f"{name}_ci_high"))


def _pick_threshold(early_exit: pd.DataFrame, temperature: float, differs: set, max_overhead: float):
    candidates = early_exit[(early_exit.role == "treatment") & (early_exit.temperature == temperature)]
    if candidates.empty:
        return None, f"no early-exit runs at temperature {temperature}"
    usable, rejected = [], []
    for r in candidates.itertuples():
        name = f"threshold {r.confidence_threshold} ({r.label})"
        if r.pair_status != "ok":
            rejected.append(f"{name}: {first_present(r.pair_reason, r.reason)}")
        elif pd.isna(r.dram_write_reduction_pct):
            rejected.append(f"{name}: no DRAM data ({r.dram_reason})")
        elif r.run_id in differs:
            rejected.append(f"{name}: outputs differ from threshold 0.0 at temperature 0")
        elif r.dram_write_reduction_pct <= 0 or not r.latency_overhead_pct_ci_high <= max_overhead:
            rejected.append(f"{name}: DRAM writes {_fmt(-r.dram_write_reduction_pct)}, latency "
                            f"{_fmt_ci(r, 'latency_overhead_pct')} (CI must stay below +{max_overhead}%)")
        else:
            usable.append(r)
    if not usable:
        return 0.0, "off: " + "; ".join(rejected)
    best = max(usable, key=lambda r: r.dram_write_reduction_pct)
    return best.confidence_threshold, (
        f"threshold {best.confidence_threshold} ({best.label}): DRAM writes {_fmt(-best.dram_write_reduction_pct)}, "
        f"tokens stopped {best.stop_pct:.1f}%, latency {_fmt_ci(best, 'latency_overhead_pct')}; "
        f"largest DRAM saving whose latency CI stays below +{max_overhead}%")


def recommend(adaptive: pd.DataFrame, early_exit: pd.DataFrame, determinism: pd.DataFrame, *,
              max_latency_overhead_pct: float = MAX_LATENCY_OVERHEAD_PCT) -> pd.DataFrame:
    """Recommend a configuration per workload type, with the numbers each choice rests on.

    Adaptive draft length is "on" only if the latency-reduction CI lies entirely above 0 and, at
    temperature 0, outputs are identical to adaptive off. The confidence threshold, taken from the
    early-exit runs at the workload's temperature, is the one with the largest DRAM write reduction whose
    latency-overhead CI stays below `max_latency_overhead_pct` and whose outputs match threshold 0.0;
    0.0 (off) when none qualifies, None when nothing was measured at that temperature.

    Args:
        adaptive: `nwor.stats.compare_adaptive` output.
        early_exit: `nwor.stats.compare_early_exit` output.
        determinism: `check_determinism` output.
        max_latency_overhead_pct: the largest latency cost an early exit may have.
    """
    differs = set(determinism[determinism.status == "differs"].treatment_run_id)
    rows = []
    for r in adaptive.itertuples():
        latency = _fmt_ci(r, "latency_reduction_pct")
        if r.status != "ok":
            choice, why = "no recommendation", first_present(r.reason)
        elif r.treatment_run_id in differs:
            choice, why = "off", f"outputs differ from adaptive off at temperature 0; latency reduction {latency}"
        elif r.latency_reduction_pct_ci_low > 0:
            choice, why = "on", (f"latency reduction {latency}, throughput {_fmt_ci(r, 'throughput_improvement_pct')}"
                                 f", draft tokens {_fmt(-r.draft_token_reduction_pct)}")
        else:
            choice, why = "off", f"latency reduction {latency}: {r.latency_reduction_pct_verdict}"
        threshold, threshold_why = _pick_threshold(early_exit, r.temperature, differs, max_latency_overhead_pct)
        rows.append({"workload": r.label, "temperature": r.temperature, "adaptive_draft_length": choice,
                     "adaptive_reason": why, "confidence_threshold": threshold, "threshold_reason": threshold_why})
    return pd.DataFrame(rows)
