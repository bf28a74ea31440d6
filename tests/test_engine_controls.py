"""A small controls run on the real CPU vLLM engine (smoke profile), then its Dynamic SD run and the analysis.

W3's sweep with arms cut to adaptive, no speculation, K=1 and K=3 (two engines each, interleaved), then the
W3 Dynamic SD run, whose schedule is tuned from that sweep: every arm is in the JSON and the analysis names a
best K.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from nwor import controls
from nwor.analysis import load_profile
from nwor.arms import calibration, within_run
from nwor.execute import run_notebook
from nwor.grid import expand, load_profile as load_run_profile

pytestmark = pytest.mark.engine

SWEEP = "controls_run3_r36_t128_temp0.0"
KEEP = ("nospec", "k1", "k3")


@pytest.fixture(scope="module")
def controls_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    specs = {s.run_id: s for s in expand("controls_grid", load_run_profile("smoke"))}
    sweep = specs[SWEEP]
    sweep = replace(sweep, arms=tuple(a for a in sweep.arms if a["name"] in KEEP))
    docs = [run_notebook(sweep, root=root), run_notebook(specs[SWEEP + controls.DYNAMIC_SUFFIX], root=root)]
    return sweep, docs, root


def test_sweep_measures_every_arm_in_interleaved_engines(controls_run):
    sweep, (doc, _), _ = controls_run
    assert doc["status"] == "ok" and doc["design"]["name"] == "engines-interleaved"
    assert {a["name"] for a in doc["design"]["arms"]} == {"run", *KEEP}
    reps = doc["replicates"]
    assert len(reps) == 4 * sweep.engine_instances == 8
    measured = {b["arm"] for r in reps for b in r["batches"]}
    assert measured == {"run", *KEEP}
    nospec = next(r for r in reps if r["arms"] == ["nospec"])
    assert nospec["counters"]["nospec"]["num_draft_tokens"] in (None, 0)  # no speculation at all
    k3 = next(r for r in reps if r["arms"] == ["k3"])
    assert k3["counters"]["k3"]["num_draft_tokens"] > 0 and k3["plugin_loaded"]


def test_dynamic_sd_run_gets_its_schedule_from_the_sweep(controls_run):
    _, (_, dynamic), _ = controls_run
    assert dynamic["status"] == "ok", dynamic.get("error")
    tuning = dynamic["dynamic_sd"]
    assert tuning["sources"] == [SWEEP] and tuning["schedule"][0][0] == 1
    assert tuning["chosen_k"]["9"] in (1, 3)  # smoke W3: 9 requests per batch
    arm = next(a for a in dynamic["design"]["arms"] if a["name"] == "dynamic_sd")
    assert arm["num_speculative_tokens_per_batch_size"] == tuning["schedule"]
    assert dynamic["spec"]["arms"][0]["num_speculative_tokens_per_batch_size"] == "tuned"  # as planned
    assert {b["arm"] for r in dynamic["replicates"] for b in r["batches"]} == {"run", "dynamic_sd"}


def test_analysis_picks_a_best_k_and_states_every_comparison(controls_run):
    _, _, root = controls_run
    frames = load_profile(root, "smoke")
    latencies = controls.arm_latencies(frames)
    best = controls.best_k(latencies)
    assert best.best_k.iloc[0] in (1, 3) and best.best_k.iloc[0] in best.tied_ks.iloc[0]
    said = controls.statements(frames, calibration(within_run(frames)), latencies)
    assert len(said) == len(controls.STATEMENTS)
    assert said.latency_change_pct.notna().all() and said.ci_low.notna().all()
