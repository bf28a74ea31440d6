"""Controller traces in the result: fetched once per arm per engine instance, and read back as a frame.

Stored at `replicates[i].controller_trace[arm]`: `{"status": "ok", "steps", "bucket_steps", "points",
"step", "t_s", "ewma", "draft_length", "drafted", "accepted", "tokens_stopped", "checks", "segments",
"dropped_steps", "rule"}` (columns of at most nwor.plugin.trace.MAX_POINTS points, the compaction rule
recorded), or `{"status": "unavailable" | "empty", "reason"}` with no columns where nothing was traced.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from nwor.plugin.trace import COLUMNS

FRAME_COLUMNS = ["run_id", "grid", "instance", "arm", "label", "ewma_alpha", "segment", "part", *COLUMNS]


def unavailable_reason(plan) -> str:
    """Why an engine without nwor's plugin has no trace."""
    if plan is not None and "native" in plan.impl.values():
        return "the fork's native controller exposes no per-step state (only its log's totals)"
    return "nwor's plugin is not loaded in this engine (stock vLLM): no controller to trace"


def fetch_traces(llm, arms: list[str], plugin_loaded: bool, plan=None) -> dict:
    """Each arm's trace from the engine (one RPC per arm, after the instance's last measured batch).

    Raises:
        FeatureUnavailable: the plugin is loaded but does not answer.
    """
    if not plugin_loaded:
        return {name: {"status": "unavailable", "reason": unavailable_reason(plan)} for name in arms}
    from nwor import plugin

    return {name: plugin.read_trace(llm, name) for name in arms}


def trace_rows(doc: dict) -> list[dict]:
    """One row per trace point of every arm and instance of a result document (none without traces)."""
    arms = {a.get("name"): a for a in (doc.get("design") or {}).get("arms") or []}
    spec = doc.get("spec") or {}
    rows = []
    for rep in doc.get("replicates") or []:
        for arm, trace in (rep.get("controller_trace") or {}).items():
            if not trace or trace.get("status") != "ok":
                continue
            segments = sorted(trace.get("segments") or [], key=lambda s: s["step"])
            settings = arms.get(arm, {})
            alpha = settings.get("ewma_alpha", spec.get("ewma_alpha", 0.1))
            label = settings.get("label") or arm
            for i in range(trace["points"]):
                step = trace["step"][i]
                seg = next((s for s in reversed(segments) if s["step"] <= step), {})
                rows.append({"run_id": doc.get("run_id"), "grid": doc.get("grid"), "instance": rep.get("instance"),
                             "arm": arm, "label": label, "ewma_alpha": alpha, "segment": seg.get("batch"),
                             "part": seg.get("part"), **{c: trace[c][i] for c in COLUMNS}})
    return rows


def traces_frame(outputs_root: str | Path, profile: str, grids=("controller_grid",)) -> pd.DataFrame:
    """Every trace point of a profile's results in `grids` (columns FRAME_COLUMNS; empty when none)."""
    from nwor.analysis import read_run
    from nwor.errors import SchemaError

    rows = []
    for grid in grids:
        for path in sorted((Path(outputs_root) / profile / grid).glob("*.json")):
            if path.name.endswith(".ncu-pass.json"):
                continue
            try:
                doc = read_run(path)
            except SchemaError:
                continue  # the report's load stage lists unreadable files; a trace plot only skips them
            if doc.get("status") == "ok":
                rows += trace_rows(doc)
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
