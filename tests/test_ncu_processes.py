"""Tests for nwor.ncu_processes on real outputs: the H100 session-5 ncu and vLLM logs committed under outputs/
and the H100 CSV exports of tests/fixtures/ncu (README there)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nwor import ncu_pass, ncu_processes as P, ncu_read
from nwor.config import RunSpec
from nwor.ncu_metrics import DRAM_WRITE

ROOT = Path(__file__).resolve().parent.parent
SESSION5 = ROOT / "outputs" / "gpu-h100-protocol" / "session5" / "gpu-smoke" / "early_exit_grid"
RUN3 = "run3_r36_t128_temp0.0_thresh0.5"
# Two H200s at tensor parallel 2 (session 11): the window pass that hung, and the KV sub-pass after it.
SESSION11 = ROOT / "outputs" / "gpu-h100-protocol" / "session11" / "ncu-tp2-incomplete"
SERVER_LOG = (ROOT / "outputs" / "gpu-h100-protocol" / "session4" / "gpu-smoke" / "serving_grid" /
              "serve3_t128_temp0.0_d10_adaptive0_thresh0.0.serve" / "instance1_baseline.server.log")


def _lines(name: str) -> list[str]:
    return (SESSION5 / name).read_text().splitlines()


def test_connected_processes_from_real_ncu_logs():
    # Session 5, tensor parallel 1: ncu attached to one process, the engine core that holds the model.
    assert P.connected(_lines(f"{RUN3}.ncu.log")) == [{"pid": 7447, "executable": "/usr/bin/python3.12"}]
    assert P.connected(_lines(f"{RUN3}.ncu-kv.log")) == [{"pid": 12831, "executable": "/usr/bin/python3.12"}]
    # Without the executable (older ncu / the fake in test_profile) the pid is still read.
    assert P.connected(["==PROF== Connected to process 575", "==PROF== Disconnected from process 575"]) == [
        {"pid": 575, "executable": None}]


def test_tp_ranks_from_real_vllm_logs_in_both_formats():
    # nwor's log format "[pid N] vllm.distributed.parallel_state: ... TP rank 0"
    assert P.tp_ranks_from_log((SESSION5 / f"{RUN3}.ncu-pass.vllm.log").read_text()) == {7447: 0}
    # vLLM's own prefix "(EngineCore pid=N) INFO ... TP rank 0" (a `vllm serve` log)
    ranks = P.tp_ranks_from_log(SERVER_LOG.read_text())
    assert list(ranks.values()) == [0] and len(ranks) == 1


def test_at_tensor_parallel_2_ncu_attached_to_each_rank_s_worker():
    """Real GPU logs of a TP-2 run: ncu's two connected processes are the two workers, rank 0 and rank 1."""
    window = P.connected((SESSION11 / f"{RUN3}.ncu.log").read_text().splitlines())
    assert [p["pid"] for p in window] == [3862, 3863]
    assert P.tp_ranks_from_log((SESSION11 / f"{RUN3}.ncu-pass.vllm.log").read_text()) == {3862: 0, 3863: 1}
    kv = P.connected((SESSION11 / f"{RUN3}.ncu-kv.log").read_text().splitlines())
    assert [p["pid"] for p in kv] == [5385, 5386]


def test_the_window_pass_that_hung_at_tensor_parallel_2_is_not_started():
    spec = RunSpec(run_id="r", grid="g", ncu=True, tensor_parallel_size=2)
    assert ncu_pass.window_skip_reason(spec) == ncu_pass.TP_WINDOW_SKIP
    assert "tensor parallel 2" in ncu_pass.TP_WINDOW_SKIP
    # Tensor parallel 1 (sessions 4-5 measured it) and per-kernel replay are not affected.
    assert ncu_pass.window_skip_reason(RunSpec(run_id="r", grid="g", ncu=True)) is None
    assert ncu_pass.window_skip_reason(RunSpec(run_id="r", grid="g", ncu=True, tensor_parallel_size=2,
                                               ncu_replay_mode="kernel")) is None


def test_the_pass_maps_the_profiled_process_to_its_rank():
    paths = ncu_pass.side_paths(SESSION5 / f"{RUN3}.json")
    assert ncu_pass._tp_ranks(paths, None) == {7447: 0}
    kv_paths = ncu_pass.side_paths(SESSION5 / f"{RUN3}.json", "ncu-kv")
    assert ncu_pass._tp_ranks(kv_paths, None) == {12831: 0}
    # With nwor's plugin loaded the pass's own result names each rank's pid as well.
    doc = {"plugin_ranks": {"ranks": [{"tp_rank": 0, "pids": [11]}, {"tp_rank": 1, "pids": [12]}]}}
    assert ncu_pass._tp_ranks(paths, doc) == {7447: 0, 11: 0, 12: 1}


@pytest.fixture()
def two_processes(ncu_fixtures) -> pd.DataFrame:
    # Two real H100 exports of the same probe, one run directly (pid 575), one as a child (pid 632): the
    # shape of a two-rank report, each process with its own results.
    return pd.concat([ncu_read.read_csv_export(ncu_fixtures / "h100_profiler_range_raw.csv"),
                      ncu_read.read_csv_export(ncu_fixtures / "h100_child_process_raw.csv")], ignore_index=True)


def test_per_process_totals_from_real_exports(two_processes, ncu_fixtures):
    per = P.per_process(two_processes)
    assert sorted(per) == [575, 632] and per[575]["results"] == per[632]["results"] == 5
    alone = ncu_read.totals(ncu_read.read_csv_export(ncu_fixtures / "h100_child_process_raw.csv"))
    assert per[632]["totals"] == alone
    assert per[575]["totals"][DRAM_WRITE] + per[632]["totals"][DRAM_WRITE] == ncu_read.totals(two_processes)[DRAM_WRITE]
    assert P.per_process(two_processes.assign(Process=None)) is None  # what ncu_report gives


def test_block_and_rank_verdict(two_processes):
    log = ["==PROF== Connected to process 570 (/usr/bin/python3.12)",  # e.g. an engine core with no kernels
           "==PROF== Connected to process 575 (/usr/bin/python3.12)",
           "==PROF== Connected to process 632 (/usr/bin/python3.12)"]
    block = P.block(log, two_processes)
    assert block["num_connected"] == 3 and block["num_profiled"] == 2 and block["reason"] is None
    assert [(p["pid"], p["results"]) for p in block["processes"]] == [(570, 0), (575, 5), (632, 5)]
    both = P.with_ranks(block, 2, {575: 0, 632: 1})
    assert both["tp_ranks_profiled"] == [0, 1] and both["all_ranks_profiled"] is True
    assert [p["tp_rank"] for p in both["processes"]] == [None, 0, 1]
    assert P.describe(both) == "2 processes profiled (TP ranks 0, 1), 3 connected"
    lines = P.summary_lines(both)
    assert lines[0].endswith("all tensor-parallel ranks profiled: yes") and len(lines) == 4
    assert lines[2].startswith("  pid 575 (/usr/bin/python3.12) TP rank 0: 5 result(s), dram__bytes_write.sum")
    one = P.with_ranks(P.block(log[:2], two_processes[two_processes["Process"] == 575]), 2, {575: 0, 632: 1})
    assert one["tp_ranks_profiled"] == [0] and one["all_ranks_profiled"] is False
    assert P.with_ranks(block, 2, {})["all_ranks_profiled"] is None  # ranks unknown: no verdict
    # Rank 1's pid not in any log: it may be the process of unknown rank, so no verdict either.
    partial = P.with_ranks(block, 2, {575: 0})
    assert partial["tp_ranks_profiled"] == [0] and partial["all_ranks_profiled"] is None
    assert P.with_ranks(None, 2, {575: 0}) is None


def test_block_without_process_ids_keeps_what_the_log_says():
    block = P.with_ranks(P.block(_lines(f"{RUN3}.ncu.log"), None, reason="no per-process split: x"), 1, {7447: 0})
    assert block["num_profiled"] is None and block["tp_ranks_profiled"] is None and block["all_ranks_profiled"] is None
    assert block["processes"] == [{"pid": 7447, "executable": "/usr/bin/python3.12", "tp_rank": 0, "results": None,
                                   "totals": None}]
    assert P.describe(block) == "per-process results unknown (no per-process split: x), 1 connected"
