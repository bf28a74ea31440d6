"""Every tensor-parallel rank's nwor drafter: is it hooked, and do its counters agree with the other ranks'?

Each rank's worker runs its own drafter on the same batch (vLLM's V1 model runner builds one per rank), so
the plugin's counters exist once per rank. `nwor.plugin.read_stats` returns rank 0's for the engine and
every rank's under `"ranks"`; this module sums them per rank and arm over a replicate's measured batches
and says whether the ranks agree. Result keys: `replicates[i].plugin_ranks` (per engine instance) and the
top-level `plugin_ranks` (the whole run); docs/plugin.md, "Tensor parallel".
"""
from __future__ import annotations

from nwor.plugin import RANK_COUNTERS

IDENTITY = ("rank", "tp_rank", "pid", "device", "hook_installed", "drafter")
MAX_DIFFERENCES = 10  # differences listed in full; the rest are only counted (keeps the result small)


def add(total: list[dict] | None, ranks: list[dict]) -> list[dict]:
    """Per-rank sums of `RANK_COUNTERS` over batches (`ranks`: one `read_stats(llm)["ranks"]`).

    A batch from more ranks than the total so far adds entries (a rank missing from a batch adds nothing).
    """
    out = [dict(entry) for entry in total or []]
    for index, entry in enumerate(ranks):
        if index == len(out):
            out.append({"rank": entry.get("rank", index), "tokens_stopped": 0, "checks": 0, "steps": 0,
                        "draft_length_histogram": {}})
        into = out[index]
        for key in ("tokens_stopped", "checks", "steps"):
            into[key] = None if into[key] is None or entry.get(key) is None else into[key] + entry[key]
        histogram = dict(into["draft_length_histogram"])
        for length, steps in (entry.get("draft_length_histogram") or {}).items():
            histogram[int(length)] = histogram.get(int(length), 0) + steps
        into["draft_length_histogram"] = dict(sorted(histogram.items()))
    return out


def differences(per_rank: list[dict]) -> list[dict]:
    """The counters whose value is not the same on every rank: `[{"counter", "values": [one per rank]}]`."""
    found = []
    for key in RANK_COUNTERS:
        values = [_plain(entry.get(key)) for entry in per_rank]
        if any(v != values[0] for v in values[1:]):
            found.append({"counter": key, "values": values})
    return found


def _plain(value):
    # JSON turns histogram keys into strings: compare {"4": 15} and {4: 15} as equal.
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def replicate_block(workers: list[dict], counters: dict[str, list[dict] | None]) -> dict:
    """`replicates[i].plugin_ranks`: each rank's worker (`nwor.plugin.read_ranks`), each arm's per-rank
    counters (`add` over its measured batches) and the verdict for this engine instance."""
    found = [{"arm": arm, **d} for arm, per_rank in counters.items() for d in differences(per_rank or [])]
    return {"num_ranks": len(workers), "ranks": [{k: w.get(k) for k in IDENTITY} for w in workers],
            "counters": counters, **_verdict(len(workers), found, f"{len(counters)} arm(s)")}


def _verdict(num_ranks: int, found: list[dict], over: str) -> dict:
    if num_ranks <= 1:
        return {"consistent": None, "verdict": f"{num_ranks} rank: nothing to compare", "differences": [],
                "more_differences": 0}
    if not found:
        verdict = f"identical counters on all {num_ranks} ranks ({over})"
    else:
        verdict = f"counters differ between ranks in {len(found)} place(s) ({over})"
    return {"consistent": not found, "verdict": verdict, "differences": found[:MAX_DIFFERENCES],
            "more_differences": max(0, len(found) - MAX_DIFFERENCES)}


def run_block(replicates: list[dict]) -> dict | None:
    """Top-level `plugin_ranks`: every rank's hook and the verdict over every engine instance and arm.

    Returns:
        `{"num_ranks", "instances", "ranks": [{"rank", "tp_rank", "devices", "pids", "hook_installed"}],
        "hook_installed": [one bool per rank, true only if hooked in every instance], "consistent",
        "verdict", "differences": [{"instance", "arm", "counter", "values"}], "more_differences"}`;
        None when no instance loaded nwor's plugin (stock vLLM, the fork).
    """
    blocks = [(r.get("instance"), r["plugin_ranks"]) for r in replicates if r.get("plugin_ranks")]
    if not blocks:
        return None
    num_ranks = max(b["num_ranks"] for _, b in blocks)
    ranks = []
    for index in range(num_ranks):
        seen = [b["ranks"][index] for _, b in blocks if index < len(b["ranks"])]
        ranks.append({"rank": seen[0].get("rank"), "tp_rank": seen[0].get("tp_rank"),
                      "devices": sorted({str(s.get("device")) for s in seen}), "pids": [s.get("pid") for s in seen],
                      # A rank absent from an instance counts as not hooked there.
                      "hook_installed": len(seen) == len(blocks) and all(s.get("hook_installed") for s in seen)})
    found = [{"instance": instance, **d} for instance, b in blocks
             for d in b.get("differences") or []]
    more = sum(b.get("more_differences") or 0 for _, b in blocks)
    arms = sorted({arm for _, b in blocks for arm in b.get("counters") or {}})
    out = {"num_ranks": num_ranks, "instances": len(blocks), "ranks": ranks,
           "hook_installed": [r["hook_installed"] for r in ranks],
           **_verdict(num_ranks, found, f"{len(blocks)} engine instance(s) x {len(arms)} arm(s)")}
    out["more_differences"] += more
    return out
