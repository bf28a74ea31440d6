"""Load a profile's result JSONs into tidy frames: the first stage of the report (load -> compare -> findings -> plots).

Frames: `runs` (one row per run, with its `machine` (nwor.machines); failed, refused, missing and unreadable ones
with their reason), `arm_batches` (one row per measured batch of every arm and engine instance, from `replicates[]`),
`arm_counters` (vLLM's draft counters per arm, summed over its instances),
`batches` (the seed's `results[]`, arm "run"), `requests` (`requests[]`) and `skipped` (unreadable files).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from nwor.errors import SchemaError
from nwor.kv_writes import KV_COLUMNS, kv_fields
from nwor.machines import machine_name
from nwor.ncu_metrics import DRAM_WRITE
from nwor.paths import SESSION_SEPARATOR, is_side_result, report_folder
from nwor.results import SCHEMA_VERSION, STATUSES, read_result
from nwor.tp_report import rank_fields

logger = logging.getLogger(__name__)

LEGACY = "single-arm (older result without replicates: one engine instance assumed)"
OLDER_VERSIONS = tuple(v for v in (1,) if v != SCHEMA_VERSION)  # schema versions written before replicates
INT_COLUMNS = ("workload_number", "num_prompts", "max_tokens", "num_speculative_tokens", "n_batches",
               "engine_instances", "spec_num_draft_tokens", "num_drafts", "num_draft_tokens", "num_accepted_tokens",
               "tokens_stopped", "early_exit_checks")
COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")  # vLLM's, summed over instances
ARM_COUNTER_COLUMNS = ["run_id", "arm", *COUNTERS, "draft_acceptance_rate"]
ARM_BATCH_COLUMNS = ["run_id", "grid", "design", "instance", "arm", "position", "latency_s", "num_output_tokens",
                     "output_tokens_per_s"]
ADAPTIVE_ID = re.compile(r"^run(?P<workload_number>\d+)_r(?P<num_prompts>\d+)_t(?P<max_tokens>\d+)"
                         r"_temp(?P<temperature>\d+(?:\.\d+)?)_d(?P<num_speculative_tokens>\d+)"
                         r"_adaptive(?P<adaptive>[01])$")
EARLY_EXIT_ID = re.compile(r"^run(?P<run_number>\d+)_r(?P<num_prompts>\d+)_t(?P<max_tokens>\d+)"
                           r"_temp(?P<temperature>\d+(?:\.\d+)?)_thresh(?P<confidence_threshold>\d+(?:\.\d+)?)$")


def first_present(*values):
    """The first value that is neither None nor NaN (pandas turns a missing reason into NaN), else None."""
    return next((v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))), None)


@dataclass(frozen=True)
class Frames:
    """The tidy frames of one profile (see the module docstring)."""

    runs: pd.DataFrame
    arm_batches: pd.DataFrame
    batches: pd.DataFrame
    requests: pd.DataFrame
    skipped: pd.DataFrame
    arm_counters: pd.DataFrame = field(default_factory=pd.DataFrame)


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
    """`nwor.results.read_result`, plus the checks the analysis relies on.

    Raises:
        SchemaError: what `read_result` rejects; an unknown status; a run id that is not the file name; an
            `ok` run without `results`, `metrics` or `summary.per_mode[0]`; replicates without arm or latency.
    """
    path = Path(path)
    try:
        doc = read_result(path)
    except SchemaError as err:
        doc = _older_result(path, err)
    if doc.get("status") not in STATUSES or doc.get("run_id") != path.stem:
        raise SchemaError(f"{path}: status {doc.get('status')!r} (allowed {STATUSES}) and run_id "
                          f"{doc.get('run_id')!r} must match the file name", path=str(path))
    if doc["status"] == "ok" and not (doc.get("results") and doc.get("metrics")
                                      and (doc.get("summary") or {}).get("per_mode")):
        raise SchemaError(f"{path}: an ok run needs results[], metrics and summary.per_mode[0]", path=str(path))
    for replicate in doc.get("replicates") or []:
        for batch in replicate.get("batches") or []:
            if not isinstance(batch.get("arm"), str) or not isinstance(batch.get("latency_s"), (int, float)):
                raise SchemaError(f"{path}: replicate {replicate.get('instance')} has a batch without arm or "
                                  "latency_s", path=str(path))
    return doc


def _older_result(path: Path, error: SchemaError) -> dict:
    """A result of a schema version before `replicates` (`OLDER_VERSIONS`), read as one engine instance.

    `read_result` reads only the current version (the runner reruns older ones as stale); a report still
    shows them, flagged `LEGACY`. Anything else re-raises `read_result`'s error.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise error from None
    if not isinstance(doc, dict) or doc.get("schema_version") not in OLDER_VERSIONS or doc.get("replicates"):
        raise error
    return doc


def arm_batches(doc: dict) -> list[dict]:
    """One row per measured batch of every arm and instance; an older result is instance 0, arm "run".

    `instance` is the replicate's index (engines in start order), unique within a run whatever the numbering.
    """
    base = {"run_id": doc["run_id"], "grid": doc.get("grid"), "design": design_name(doc)}
    if doc.get("replicates"):
        return [{**base, "instance": i, "arm": b["arm"], "position": b.get("position"),
                 "latency_s": b["latency_s"], "num_output_tokens": b.get("num_output_tokens"),
                 "output_tokens_per_s": b.get("output_tokens_per_s")}
                for i, r in enumerate(doc["replicates"]) for b in r.get("batches") or []]
    return [{**base, "instance": 0, "arm": "run", "position": r.get("batch", k), "latency_s": r["latency_s"],
             "num_output_tokens": r.get("num_output_tokens"), "output_tokens_per_s": r.get("output_tokens_per_s")}
            for k, r in enumerate(doc.get("results") or [])]


def arm_counters(doc: dict) -> list[dict]:
    """Speculative-decoding counters of each arm, summed over the instances that measured it (replicates only).

    Arms of one run see the same prompts and batch counts, so their counters compare directly.
    """
    totals: dict[str, dict] = {}
    for replicate in doc.get("replicates") or []:
        for arm, counts in (replicate.get("counters") or {}).items():
            total = totals.setdefault(arm, dict.fromkeys(COUNTERS, 0))
            for name in COUNTERS:
                value = (counts or {}).get(name)
                total[name] = None if value is None or total[name] is None else total[name] + value
    return [{"run_id": doc["run_id"], "arm": arm, **t,
             "draft_acceptance_rate": (t["num_accepted_tokens"] / t["num_draft_tokens"]
                                       if t["num_accepted_tokens"] is not None and t["num_draft_tokens"] else None)}
            for arm, t in totals.items()]


def design_name(doc: dict) -> str:
    """The result's `design.name`; results written before replicates existed are flagged `LEGACY`."""
    return (doc.get("design") or {}).get("name") or (LEGACY if not doc.get("replicates") else "unnamed design")


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
    if row["grid"] == "adaptive_grid" and pd.notna(row.get("workload_number")):
        return f"W{row['workload_number']} {row.get('workload_name') or ''}".strip()
    if row["grid"] == "early_exit_grid" and pd.notna(row.get("max_tokens")):
        return f"t{row['max_tokens']} temp{row['temperature']}"
    return row["run_id"]


def _design_fields(doc: dict) -> dict:
    design, replicates = doc.get("design") or {}, doc.get("replicates") or []
    arms = {a.get("name"): {k: v for k, v in a.items() if k != "name"} for a in design.get("arms") or []}
    ended = [(r.get("warmup") or {}).get("ended_by") for r in replicates]
    return {"design": design_name(doc), "engine_instances": design.get("engine_instances", len(replicates) or 1),
            "arms": list(arms) or ["run"], "arm_settings": arms or {"run": {}},
            "warmup": ", ".join(f"{n} {e}" for e, n in pd.Series(ended, dtype=object).value_counts().items())
            if ended else None}


def _run_row(doc: dict, path: Path) -> dict:
    ids, g = parse_run_id(doc["run_id"]), doc.get
    workload, features, env = g("workload") or {}, g("features") or {}, g("env") or {}
    requested, results = features.get("requested") or {}, g("results") or []
    sampling = results[0].get("sampling_params", {}) if results else {}
    metrics, mode = g("metrics") or {}, ((g("summary") or {}).get("per_mode") or [{}])[0]
    ncu, early_exit = g("ncu") or {}, g("early_exit") or {}
    dram = (mode.get("ncu_metrics") or {}).get(DRAM_WRITE, (ncu.get("totals") or {}).get(DRAM_WRITE))
    row = {"run_id": doc["run_id"], "grid": doc.get("grid"), "profile": doc.get("profile"),
           "status": doc["status"], "reason": _reason(doc), "path": str(path), "machine": machine_name(env),
           **_design_fields(doc),
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
           "stop_pct": early_exit.get("stop_pct"), **kv_fields(ncu.get("kv_cache_writes") or {}), **rank_fields(doc)}
    for key in ("mean_latency_s", "p50_latency_s", "p99_latency_s", "output_tokens_per_s", "num_drafts",
                "num_draft_tokens", "num_accepted_tokens", "draft_acceptance_rate", "mean_acceptance_length",
                "acceptance_rate_per_pos"):
        row[key] = metrics.get(key)
    row["label"] = _label(row)
    return row


def _placeholder(run_id: str, grid: str, profile: str, status: str, reason: str) -> dict:
    # A run the report must show without a readable result: its parameters come from the run id.
    fields = parse_run_id(run_id)
    row = {"run_id": run_id, "grid": grid, "profile": profile, "status": status, "reason": reason,
           "workload_name": None, "arms": [], "arm_settings": {}, "machine": None,
           **{k: fields.get(k) for k in ("workload_number", "num_prompts", "max_tokens", "temperature",
                                         "adaptive", "confidence_threshold")}}
    return {**row, "label": _label(row)}


def load_profile(outputs_root: str | Path, profile: str,
                 expected: Mapping[str, Iterable[str]] | None = None) -> Frames:
    """Load every `<outputs_root>/<profile>/<grid>/*.json` into tidy frames.

    A file that `read_run` rejects is skipped: it is listed in `skipped` and keeps a run row with status
    "unreadable" and the reason, so one corrupt file never hides the rest of the report.

    Args:
        outputs_root: the folder holding one folder per profile.
        profile: e.g. "smoke" or "full".
        expected: optional grid name -> run ids the grid plans; those without a JSON get a row with
            status "missing" so that they show in every table.

    Raises:
        FileNotFoundError: the profile folder does not exist or holds no result JSON.
    """
    folder = Path(outputs_root) / profile
    # An ncu pass's own result (`<run_id>.ncu-pass.json`) sits beside the run's; it is not a run.
    paths = sorted(p for p in folder.glob("*/*.json") if not is_side_result(p))
    if not paths:
        raise FileNotFoundError(f"no result JSONs under {folder}/<grid>/")
    runs, arms, counters, batches, requests, skipped = [], [], [], [], [], []
    for path in paths:
        shown = str(path.relative_to(folder.parent))  # no machine paths in shared reports
        try:
            doc = read_run(path)
            if (doc.get("spec") or {}).get("serve_max_concurrency") is not None:
                continue  # load sweeps, not batches: the report's serving section reads them (serving_report)
            row = _run_row(doc, path)
        except SchemaError as err:
            reason = str(err).replace(str(path), shown)
            skipped.append({"path": shown, "reason": reason})
            runs.append(_placeholder(path.stem, path.parent.name, profile, "unreadable", f"unreadable: {reason}"))
            continue
        runs.append({**row, "path": shown})
        if doc["status"] != "ok":
            continue  # a run that did not finish has no measurements to compare
        arms += arm_batches(doc)
        counters += arm_counters(doc)
        for result in doc.get("results") or []:
            batches.append({"run_id": doc["run_id"], "grid": doc.get("grid"),
                            **{k: v for k, v in result.items() if k not in ("outputs", "sampling_params")}})
        requests += [{"run_id": doc["run_id"], "grid": doc.get("grid"), **r} for r in doc.get("requests") or []]
    # A calibration run assembled per session (`<run_id>__<session>`, nwor.study) stands for its planned run.
    found = {(r["grid"], str(r["run_id"]).partition(SESSION_SEPARATOR)[0]) for r in runs}
    for grid, run_ids in (expected or {}).items():
        runs += [_placeholder(run_id, grid, profile, "missing", f"missing: no {profile}/{grid}/{run_id}.json")
                 for run_id in run_ids if (grid, run_id) not in found]
    logger.info("loaded %d runs (%d unreadable), %d arm batches from %s", len(runs), len(skipped), len(arms), folder)
    runs = pd.DataFrame(runs)
    for column in INT_COLUMNS:
        # NaN-able integers, so that reasons print "max_tokens=256", not "256.0"
        runs[column] = pd.to_numeric(runs.get(column, pd.Series(index=runs.index, dtype=float))).astype("Int64")
    for column in ("dram_bytes_write", "confidence_threshold", "temperature", *KV_COLUMNS):
        runs[column] = pd.to_numeric(runs.get(column, pd.Series(index=runs.index, dtype=float))).astype(float)
    return Frames(runs, pd.DataFrame(arms, columns=ARM_BATCH_COLUMNS), pd.DataFrame(batches),
                  pd.DataFrame(requests), pd.DataFrame(skipped, columns=["path", "reason"]),
                  pd.DataFrame(counters, columns=ARM_COUNTER_COLUMNS))


def report_dir(outputs_root: str | Path, profile: str) -> Path:
    """`<outputs_root>/<profile>/report`, where the report's figures go (`nwor.paths.report_folder`)."""
    return report_folder(outputs_root, profile)
