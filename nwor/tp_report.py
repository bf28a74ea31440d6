"""The report's tensor-parallel check: did nwor's drafter hook run on every rank, did the ranks' counters
agree, and did ncu profile every rank's process? Flat run columns (`rank_fields`, read by nwor.analysis) and
the table (`rank_table`), shown only when a run has more than one rank."""
from __future__ import annotations

import pandas as pd

from nwor.ncu_processes import describe

RANK_COLUMNS = ("tensor_parallel_size", "plugin_ranks", "hooks_installed", "counters_consistent",
                "counters_verdict", "ncu_processes", "ncu_all_ranks_profiled", "ncu_kv_processes")


def rank_fields(doc: dict) -> dict:
    """A result's tensor-parallel evidence as flat columns (null where the result does not record it)."""
    ranks = doc.get("plugin_ranks") or {}
    hooked = ranks.get("hook_installed")
    ncu = doc.get("ncu") or {}
    kv = ncu.get("kv_cache_writes") or {}
    return {"tensor_parallel_size": (doc.get("spec") or {}).get("tensor_parallel_size"),
            "plugin_ranks": ranks.get("num_ranks"),
            "hooks_installed": None if hooked is None else
            ", ".join(f"rank {i}: {'yes' if h else 'NO'}" for i, h in enumerate(hooked)),
            "counters_consistent": ranks.get("consistent"), "counters_verdict": ranks.get("verdict"),
            "ncu_processes": describe(ncu.get("processes")),
            "ncu_all_ranks_profiled": (ncu.get("processes") or {}).get("all_ranks_profiled"),
            "ncu_kv_processes": describe(kv.get("processes"))}


def rank_table(frames) -> pd.DataFrame | str:
    """One row per run with more than one rank; a one-line note when every run has one.

    Columns: run, ranks, hook installed per rank, counters consistent (and the verdict), ncu processes profiled
    in the window pass and the KV-write sub-pass. A run without nwor's plugin says so in the hook column.
    """
    runs = frames.runs
    if "tensor_parallel_size" not in runs:
        return "No run records its tensor-parallel size."
    size = pd.to_numeric(runs["tensor_parallel_size"], errors="coerce")
    ranks = pd.to_numeric(runs["plugin_ranks"], errors="coerce")
    multi = runs[(size > 1) | (ranks > 1)]
    if multi.empty:
        return "Every run has one tensor-parallel rank: nothing to check across ranks."
    rows = []
    for _, r in multi.iterrows():
        plugin = pd.notna(r["plugin_ranks"])
        rows.append({"run": f"{r['grid']}/{r['run_id']}", "status": r["status"],
                     "ranks": int(r["tensor_parallel_size"]) if pd.notna(r["tensor_parallel_size"]) else None,
                     "hook installed": r["hooks_installed"] if plugin else "plugin not loaded (or not recorded)",
                     "counters consistent": _consistent(r) if plugin else None,
                     "ncu processes profiled": r["ncu_processes"] or (
                         "no ncu pass" if r.get("ncu_status") in (None, "off") else f"ncu {r.get('ncu_status')}"),
                     "all ranks profiled": r["ncu_all_ranks_profiled"],
                     "KV sub-pass processes": r["ncu_kv_processes"]})
    return pd.DataFrame(rows)


def _consistent(row) -> str:
    verdict = row["counters_verdict"] or ""
    flag = row["counters_consistent"]
    return verdict if flag is None or pd.isna(flag) else f"{'yes' if flag else 'NO'}: {verdict}"


def show_rank_table(frames):
    """A report cell's output: `rank_table`, or its note as Markdown when no run has more than one rank."""
    from IPython.display import Markdown

    table = rank_table(frames)
    return Markdown(table) if isinstance(table, str) else table
