"""The measurement design on the real CPU vLLM engine, through papermill and fresh kernels.

A comparison run (adaptive on, arm "baseline" off, one engine) and the engines-interleaved A/A run
(two identical arms, each in two engines of its own) of the smoke profile, executed as `nwor run` does.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nwor.execute import run_notebook
from nwor.grid import expand_all
from nwor.results import SCHEMA_VERSION

pytestmark = pytest.mark.engine

COMPARISON = "run3_r36_t128_temp0.0_d10_adaptive1"
AA_ENGINES = "aa_run3_r36_t128_temp0.0_d10_engines"
# vLLM logs this line once per engine it builds (vllm/v1/engine/core.py).
ENGINE_START_LINE = "Initializing a V1 LLM engine"


def _smoke(run_id: str):
    (spec,) = [s for s in expand_all(["all"], "smoke") if s.run_id == run_id]
    return spec


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    spec = _smoke(COMPARISON)
    return spec, run_notebook(spec, root=root), root


@pytest.fixture(scope="module")
def aa_engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    spec = _smoke(AA_ENGINES)
    return spec, run_notebook(spec, root=root), root


def _check_warmup(replicate, spec):
    w = replicate["warmup"]
    assert w["rule"]["min_batches"] == spec.warmup_batches and w["rule"]["max_batches"] == spec.warmup_max_batches
    assert w["rule"]["window"] == spec.warmup_window and w["rule"]["tolerance"] == spec.warmup_tolerance
    assert w["batches"] == len(w["series_s"]) == len(w["series_arms"])
    assert spec.warmup_batches <= w["batches"] <= spec.warmup_max_batches
    assert w["ended_by"] in ("stable", "cap")
    assert all(s > 0 for s in w["series_s"])
    assert set(w["series_arms"]) == set(replicate["arms"])


def test_comparison_run_measures_both_arms_in_one_engine_in_balanced_order(comparison):
    spec, doc, _ = comparison
    assert doc["status"] == "ok" and doc["schema_version"] == SCHEMA_VERSION
    d = doc["design"]
    assert d["name"] == "within-engine" and d["engine_instances"] == 1
    assert [a["name"] for a in d["arms"]] == ["run", "baseline"]
    assert d["arms"][1]["adaptive_draft_length"] is False and all(a["plugin_loaded"] for a in d["arms"])
    (rep,) = doc["replicates"]
    assert rep["arms"] == ["run", "baseline"] and rep["engine_start_s"] > 0
    _check_warmup(rep, spec)
    order = [b["arm"] for b in rep["batches"]]
    assert order == d["order"][0]["batches"]
    assert Counter(order) == {"run": spec.measured_batches, "baseline": spec.measured_batches}
    rounds = [order[i:i + 2] for i in range(0, len(order), 2)]
    assert all(sorted(r) == ["baseline", "run"] for r in rounds)
    assert rounds[1] == rounds[0][::-1]  # ABBA
    assert [b["position"] for b in rep["batches"]] == list(range(len(order)))
    # Each arm's counters are its own: adaptive chooses shorter drafts, the baseline always drafts 10.
    run, base = rep["counters"]["run"], rep["counters"]["baseline"]
    assert base["plugin"]["draft_length_histogram"].keys() == {"10"}
    assert set(run["plugin"]["draft_length_histogram"]) - {"10"}
    assert run["num_draft_tokens"] > 0 and base["num_draft_tokens"] > 0
    # The seed's paths describe arm "run" only.
    assert len(doc["results"]) == spec.measured_batches
    assert [r["latency_s"] for r in doc["results"]] == [b["latency_s"] for b in rep["batches"] if b["arm"] == "run"]
    assert doc["metrics"]["num_draft_tokens"] == run["num_draft_tokens"]
    assert doc["summary"]["per_mode"][0]["batches"] == spec.measured_batches
    assert doc["draft_lengths"]["histogram"] == run["plugin"]["draft_length_histogram"]


def test_comparison_notebook_shows_design_and_replicates(comparison):
    spec, _, root = comparison
    executed = (Path(root) / "smoke" / "adaptive_grid" / f"{COMPARISON}.ipynb").read_text()
    assert "Design, warm-up and replicates" in executed
    assert "warm-up ended by" in executed and "measured order" in executed


def test_aa_engines_run_starts_two_engines_per_arm_interleaved(aa_engines):
    spec, doc, root = aa_engines
    assert doc["status"] == "ok"
    d = doc["design"]
    assert d["name"] == "engines-interleaved" and d["groups"] == [["run"], ["baseline"]]
    reps = doc["replicates"]
    assert len(reps) == 2 * spec.engine_instances == 4
    assert [r["arms"] for r in reps] == [o["arms"] for o in d["order"]]
    groups = [r["group"] for r in reps]
    assert groups[:2] == groups[2:][::-1] and sorted(groups[:2]) == [0, 1]  # ABBA over engines
    starts = [r["started_utc"] for r in reps]
    assert starts == sorted(starts) and all(a["finished_utc"] <= b["started_utc"] for a, b in zip(reps, reps[1:]))
    log = (Path(root) / "smoke" / "calibration_grid" / f"{AA_ENGINES}.vllm.log").read_text()
    assert log.count(ENGINE_START_LINE) == 4
    for rep in reps:
        _check_warmup(rep, spec)
        assert len(rep["batches"]) == spec.measured_batches
        assert rep["counters"][rep["arms"][0]]["plugin"] is None  # stock engines: the plugin is not loaded
    assert len(doc["results"]) == spec.measured_batches * spec.engine_instances
