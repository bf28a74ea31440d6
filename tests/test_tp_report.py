"""Tests for nwor.tp_report: the report's tensor-parallel table on the fixture results (smoke: one rank;
full: tensor parallel 2 recorded before per-rank evidence existed) and on a run that records it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from nwor import analysis, ncu_processes, plugin_ranks, tp_report

TESTS = Path(__file__).parent
RESULTS = TESTS / "fixtures" / "results"
SESSION5 = TESTS.parent / "outputs" / "gpu-h100-protocol" / "session5" / "gpu-smoke" / "early_exit_grid"
RUN3 = "run3_r36_t128_temp0.0_thresh0.5"


def test_one_rank_everywhere_is_a_note():
    table = tp_report.rank_table(analysis.load_profile(RESULTS, "smoke"))
    assert table == "Every run has one tensor-parallel rank: nothing to check across ranks."


def test_real_h100_tp1_result_has_no_rank_evidence_yet():
    fields = tp_report.rank_fields(json.loads((SESSION5 / f"{RUN3}.json").read_text()))
    assert fields["tensor_parallel_size"] == 1 and fields["plugin_ranks"] is None
    assert fields["hooks_installed"] is None and fields["ncu_processes"] is None


def test_tp2_results_without_evidence_say_so():
    table = tp_report.rank_table(analysis.load_profile(RESULTS, "full"))  # every fixture run is tensor parallel 2
    assert isinstance(table, pd.DataFrame) and len(table) > 0 and set(table["ranks"]) == {2}
    assert list(table.columns) == ["run", "status", "ranks", "hook installed", "counters consistent",
                                   "ncu processes profiled", "all ranks profiled", "KV sub-pass processes"]
    assert set(table["hook installed"]) == {"plugin not loaded (or not recorded)"}
    ee = table.set_index("run").loc[f"early_exit_grid/{RUN3}"]
    assert ee["ncu processes profiled"] == "ncu ok"  # an ncu pass from before processes were recorded


def _tp2_run(tmp_path: Path) -> Path:
    """The smoke fixtures with one run turned into a two-rank run whose second rank disagrees, and an ncu
    pass that profiled both ranks' processes (from real H100 CSV exports, see test_ncu_processes)."""
    root = tmp_path / "results"
    shutil.copytree(RESULTS / "smoke", root / "smoke")
    path = root / "smoke" / "early_exit_grid" / f"{RUN3}.json"
    doc = json.loads(path.read_text())
    workers = [{"rank": r, "tp_rank": r, "pid": 575 + 57 * r, "device": f"cuda:{r}", "hook_installed": True,
                "drafter": "NworEagleProposer"} for r in (0, 1)]
    counts = [{"rank": r, "tokens_stopped": 10 + r, "checks": 20, "steps": 5, "draft_length_histogram": {10: 5}}
              for r in (0, 1)]
    doc["spec"]["tensor_parallel_size"] = 2
    doc["plugin_ranks"] = plugin_ranks.run_block([{"instance": 0, "plugin_ranks": plugin_ranks.replicate_block(
        workers, {"run": counts})}])
    log = ["==PROF== Connected to process 575 (/usr/bin/python3.12)",
           "==PROF== Connected to process 632 (/usr/bin/python3.12)"]
    block = ncu_processes.block(log, None, reason="no per-process split: export failed")
    doc["ncu"] = {"status": "ok", "processes": ncu_processes.with_ranks(block, 2, {575: 0, 632: 1}),
                  "kv_cache_writes": {"status": "off"}}
    path.write_text(json.dumps(doc))
    return root


def test_a_two_rank_run_shows_hooks_verdict_and_processes(tmp_path):
    table = tp_report.rank_table(analysis.load_profile(_tp2_run(tmp_path), "smoke"))
    (row,) = table.to_dict("records")
    assert row["run"] == f"early_exit_grid/{RUN3}" and row["ranks"] == 2
    assert row["hook installed"] == "rank 0: yes, rank 1: yes"
    assert row["counters consistent"].startswith("NO: counters differ between ranks in 1 place(s)")
    processes = row["ncu processes profiled"]
    assert processes.startswith("per-process results unknown") and processes.endswith("2 connected")
    assert row["all ranks profiled"] is None and row["KV sub-pass processes"] is None
