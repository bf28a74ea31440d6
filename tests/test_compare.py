"""Tests for nwor.pairing, nwor.compare and nwor.determinism on hand-built frames and the fixture results."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nwor import analysis, arms, compare, determinism, grid, pairing, stats

RESULTS = Path(__file__).parent / "fixtures" / "results"
AA_WITHIN, AA_ENGINES = "aa_run3_r36_t128_temp0.0_d10_within", "aa_run3_r36_t128_temp0.0_d10_engines"
OVERHEAD = "overhead_run1_r36_t128_temp0.0_d10_thresh0.5"
EXACT = 1e-9


@functools.lru_cache(maxsize=None)
def compared(profile: str):
    frames = analysis.load_profile(RESULTS, profile)
    within = arms.within_run(frames)
    aa = arms.calibration(within)
    return (frames, within, aa, compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), aa),
            compare.compare_early_exit(frames, pairing.pair_early_exit(frames.runs), aa))


def tiny_frames(baseline, treatment, design="within-engine"):
    """One adaptive workload: run3 adaptive1 measures arms "run" (treatment) and "baseline" per instance."""
    run_id = "run3_r2_t8_temp0.0_d4_adaptive1"
    rows = [{"run_id": run_id, "grid": "adaptive_grid", "design": design, "instance": i, "arm": arm,
             "position": k, "latency_s": x, "num_output_tokens": 16, "output_tokens_per_s": None}
            for arm, instances in (("baseline", baseline), ("run", treatment))
            for i, batches in enumerate(instances) for k, x in enumerate(batches)]
    runs = [{"run_id": run_id.replace("adaptive1", "adaptive0"),
             "adaptive": False, "arms": ["run"], "arm_settings": {"run": {}}, "spec_num_draft_tokens": 100},
            {"run_id": run_id, "adaptive": True, "arms": ["run", "baseline"], "spec_num_draft_tokens": 80,
             "arm_settings": {"run": {"adaptive_draft_length": True}, "baseline": {"adaptive_draft_length": False}}}]
    runs = [{**r, "grid": "adaptive_grid", "status": "ok", "reason": None, "workload_number": 3, "label": "W3 tiny",
             "temperature": 0.0, "num_prompts": 2, "max_tokens": 8, "confidence_threshold": 0.0, "design": design,
             "draft_acceptance_rate": 0.5, "feature_impl": "nwor-plugin", "vllm": "vLLM test"} for r in runs]
    batches = pd.DataFrame([{"run_id": r["run_id"], "batch": 0, "output_hashes": ["a", "b"]} for r in runs])
    return analysis.Frames(pd.DataFrame(runs), pd.DataFrame(rows), batches, pd.DataFrame(), pd.DataFrame())


def test_within_engine_comparison_hand_computed():
    frames = tiny_frames([[1, 1], [2, 2]], [[0.9, 0.9], [1.8, 1.8]])
    row = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), pd.DataFrame(
        columns=arms.within_run(frames).columns)).iloc[0]
    assert row.comparison == "within run" and row.design == "within-engine" and bool(row.paired)
    assert row.latency_reduction_pct == pytest.approx(10.0, abs=EXACT)
    assert row.latency_reduction_pct_ci_low == pytest.approx(10.0, abs=EXACT)  # the engine spread cancels
    assert row.throughput_improvement_pct == pytest.approx(100 / 9, abs=EXACT)
    assert row.draft_token_reduction_pct == pytest.approx(20.0, abs=EXACT)
    assert row.instances == "2 paired instances, 4 vs 4 batches" and row.method == stats.HIERARCHICAL
    assert row.latency_reduction_pct_verdict == "improvement (no A/A band)"
    assert row.calibration.startswith("no A/A calibration for within-engine")


def test_aa_runs_and_the_band_they_give():
    _, within, aa, *_ = compared("full")
    assert set(aa.run_id) == {AA_WITHIN, AA_ENGINES}
    assert not within[within.run_id == OVERHEAD].aa.any()  # arms with other settings are no A/A
    band, note = arms.aa_band(aa, "within-engine")
    row = aa.set_index("run_id").loc[AA_WITHIN]
    assert band == (row.latency_change_pct_ci_low, row.latency_change_pct_ci_high) and AA_WITHIN in note
    assert arms.aa_band(aa, arms.ACROSS_RUNS)[0] == arms.aa_band(aa, "engines-interleaved")[0]
    assert (aa.latency_change_pct_verdict == arms.NOISE).all()


def test_an_effect_overlapping_the_aa_band_is_not_established():
    frames = tiny_frames([[1.0, 1.01], [2.0, 2.02]], [[0.98, 0.99], [1.96, 1.98]])
    aa = pd.DataFrame([{"run_id": "aa", "design": "within-engine", "method": stats.HIERARCHICAL, "arm": "A2",
                        "reference_arm": "A", "latency_change_pct_ci_low": -3.0, "latency_change_pct_ci_high": 3.0,
                        "throughput_change_pct_ci_low": -3.0, "throughput_change_pct_ci_high": 3.0}])
    row = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), aa).iloc[0]
    assert row.latency_reduction_pct_ci_low > 0 and row.latency_reduction_pct_verdict == arms.NOT_ESTABLISHED
    assert row.calibration == "A/A band -3.0 to +3.0% (within-engine, aa)"


def test_adaptive_within_run_compares_even_when_the_off_run_failed(tmp_path):
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    path = tmp_path / "smoke" / "adaptive_grid" / "run3_r36_t128_temp0.0_d10_adaptive0.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "status": "failed", "error": {"type": "RunFailed", "message": "x"}}))
    frames = analysis.load_profile(tmp_path, "smoke")
    row = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), pd.DataFrame(
        columns=["design", "method"])).set_index("workload_number").loc[3]
    assert row.comparison == "within run" and pd.notna(row.latency_reduction_pct)


def _older_results(tmp_path):
    """The smoke fixtures as schema-1 results: one engine instance, no replicates or design."""
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    for path in (tmp_path / "smoke" / "adaptive_grid").glob("*.json"):
        doc = json.loads(path.read_text())
        doc.pop("replicates", None), doc.pop("design", None)
        doc["schema_version"] = 1
        path.write_text(json.dumps(doc))


def test_older_results_pair_across_runs_with_one_instance_and_no_verdict(tmp_path):
    _older_results(tmp_path)
    frames = analysis.load_profile(tmp_path, "smoke")
    row = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), compared("smoke")[2]) \
        .set_index("workload_number").loc[3]
    assert row.comparison == "across runs" and row.design == arms.ACROSS_RUNS
    assert row.instances.startswith("1 vs 1 engine instances") and row.method == stats.BATCH_ONLY
    assert row.latency_reduction_pct_verdict.startswith("no verdict: 1 engine instance")


def test_within_run_draft_counters_come_from_the_arms():
    frames, _, _, adaptive, _ = compared("full")
    row = adaptive.set_index("workload_number").loc[1]
    counters = frames.arm_counters.set_index(["run_id", "arm"])
    off, on = (counters.loc[(row.treatment_run_id, arm)] for arm in ("baseline", "run"))
    assert row.baseline_spec_num_draft_tokens == off.num_draft_tokens
    assert row.draft_token_reduction_pct == pytest.approx(100 * (1 - on.num_draft_tokens / off.num_draft_tokens),
                                                          abs=EXACT)
    assert row.draft_token_reduction_pct > 0  # shorter drafts, more of them: fewer draft tokens in all


def test_fixture_comparisons():
    _, _, _, adaptive, early_exit = compared("full")
    by = adaptive.set_index("workload_number")
    assert by.loc[6].latency_reduction_pct_verdict == "not compared: not measured"
    assert by.loc[3].latency_reduction_pct == pytest.approx(12.0, abs=1.0)  # the fixture's 0.88 factor
    assert by.loc[8].latency_reduction_pct_verdict == "regression"
    ee = early_exit.set_index("run_id")
    run7 = ee.loc["run7_r36_t256_temp0.0_thresh0.5"]
    assert run7.comparison == "within run" and run7.pair_status == "unpaired" and pd.isna(run7.dram_write_reduction_pct)
    assert ee.loc["run3_r36_t128_temp0.0_thresh0.5"].dram_write_reduction_pct == pytest.approx(15.0, abs=1e-3)
    assert ee.loc["run4_r36_t128_temp0.0_thresh0.7"].latency_overhead_pct_verdict == "regression"


def test_plugin_overhead_arms_against_stock():
    _, within, aa, *_ = compared("full")
    others = compare.compare_arms(within, aa)
    assert set(others.grid) == {"calibration_grid", "oneoff_scenarios"}
    assert set(others[others.grid == "oneoff_scenarios"].reference_arm) == {"baseline"}  # features off
    overhead = others[others.run_id == OVERHEAD].reset_index(drop=True)
    pairs = list(zip(overhead.reference_arm, overhead.arm, overhead.design))
    # every arm against stock vLLM in engines of its own; inside the plugin's engine, against plugin_off
    assert pairs == [("stock", "run", "engines-interleaved"), ("stock", "plugin_off", "engines-interleaved"),
                     ("stock", "gate", "engines-interleaved"), ("plugin_off", "run", "within-engine"),
                     ("plugin_off", "gate", "within-engine")]
    assert list(overhead.instances[:1]) == ["3 vs 3 engine instances, 12 vs 12 batches"]
    assert list(overhead.instances[3:]) == ["3 paired instances, 12 vs 12 batches"] * 2
    assert overhead.calibration[0].startswith("A/A band") and "engines-interleaved" in overhead.calibration[0]
    assert "within-engine" in overhead.calibration[3]


def test_pair_adaptive_and_early_exit():
    runs = compared("smoke")[0].runs
    pairs = pairing.pair_adaptive(runs).set_index("workload_number")
    assert list(pairs.index) == list(range(1, 9)) and (pairs.drop(6).status == "ok").all()
    assert pairs.loc[6].status == "not measured" and "failed" in pairs.loc[6].reason
    ee = pairing.pair_early_exit(runs).set_index("treatment_run_id")
    run7 = ee.loc["run7_r36_t256_temp0.0_thresh0.5"]
    assert run7.status == "unpaired" and "max_tokens=64" in run7.reason


def test_determinism_surfaces_the_differing_pair():
    result = determinism.check_determinism(compared("smoke")[0]).set_index("treatment_run_id")
    differs = result[result.status == "differs"]
    assert list(differs.index) == ["run3_r36_t128_temp0.0_d10_adaptive1"] and differs.iloc[0].n_differ == 1
    assert result.loc["run2_r12_t64_temp0.7_d10_adaptive1"].status == "not required"
    assert result.loc["run6_r36_t256_temp0.0_d10_adaptive1"].status == "not measured"


def test_determinism_counts_missing_outputs_in_common_batches_only():
    assert determinism.count_differing({0: ["a", "b"], 1: ["c", "d"]}, {0: ["a", "x"], 1: ["c"]}) == (4, 2)
    assert determinism.count_differing({0: ["a"], 1: ["b"]}, {0: ["a"]}) == (1, 0)


def _batches(*rows):
    return pd.DataFrame([{"instance": i, "round": r, "output_hashes": h} for i, r, h in rows])


def test_differing_slots_tells_repeatable_differences_from_engine_noise():
    base = _batches((0, 0, ["a", "b"]), (1, 0, ["a", "b"]))
    # The same slot differs in both engines: one distinct slot, every engine agrees.
    assert determinism.differing_slots(base, _batches((0, 0, ["a", "x"]), (1, 0, ["a", "x"]))) == (1, True)
    # Engines of one run disagree: engine-to-engine nondeterminism, slots counted once each.
    assert determinism.differing_slots(base, _batches((0, 0, ["y", "x"]), (1, 0, ["a", "x"]))) == (2, False)
    # A missing output is a differing slot; results without instance/round give no answer.
    assert determinism.differing_slots(base, _batches((0, 0, ["a"]), (1, 0, ["a"]))) == (1, True)
    assert determinism.differing_slots(_batches((None, None, ["a"])), _batches((None, None, ["b"]))) is None


def test_h100_adaptive_outputs_differ_repeatably_in_every_engine():
    """Session 6 (H100, 4 engines a run): adaptive off is identical across runs; on, 7 prompt slots differ."""
    root = Path(__file__).resolve().parents[1] / "outputs" / "gpu-h100-protocol" / "session6"
    frames = analysis.load_profile(root, "gpu-smoke", expected=grid.planned_run_ids("gpu-smoke"))
    row = determinism.check_determinism(frames).set_index("treatment_run_id").loc[
        "run3_r36_t128_temp0.0_d10_adaptive1"]
    assert (row.status, row.n_requests, row.n_differ) == ("differs", 1152, 28)
    assert "(7 distinct prompt slots; each run's outputs are the same in all its engines" in row.reason


def _label_machines(folder: Path, machine_of_run: dict, default: str | None) -> None:
    """Give every result JSON under `folder` the `env.machine_label` a run of that machine would record."""
    for path in folder.glob("*/*.json"):
        doc = json.loads(path.read_text())
        label = machine_of_run.get(path.stem, default)
        if label is not None:
            doc["env"] = {**doc["env"], "machine_id": "0123456789ab", "machine_label": label}
            path.write_text(json.dumps(doc))


W3_OFF, W3_ON = "run3_r36_t128_temp0.0_d10_adaptive0", "run3_r36_t128_temp0.0_d10_adaptive1"


def test_runs_of_different_machines_are_not_paired_but_within_run_comparisons_stay(tmp_path):
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    _label_machines(tmp_path / "smoke", {W3_OFF: "h100-b"}, "h100-a")
    frames = analysis.load_profile(tmp_path, "smoke")
    assert frames.runs.set_index("run_id").machine.to_dict()[W3_OFF] == "h100-b"
    assert set(frames.runs.machine) == {"h100-a", "h100-b"}
    pairs = pairing.pair_adaptive(frames.runs).set_index("workload_number")
    assert (pairs.loc[3].status, pairs.loc[3].reason) == ("not comparable",
                                                          "runs from different machines: h100-b vs h100-a")
    assert pairs.loc[1].status == "ok"
    same = determinism.check_determinism(frames).set_index("treatment_run_id")
    assert same.loc[W3_ON].status == "not comparable" and pd.isna(same.loc[W3_ON].n_requests)
    assert same.loc["run1_r12_t64_temp0.0_d10_adaptive1"].status == "identical"
    # W3's adaptive-on run measured its own baseline arm: that comparison is one machine's, and unchanged.
    before = compared("smoke")[3]
    after = compare.compare_adaptive(frames, pairs.reset_index(), arms.calibration(arms.within_run(frames)))
    row, old = after.set_index("workload_number").loc[3], before.set_index("workload_number").loc[3]
    assert row.comparison == "within run" and row.machine == "h100-a"
    assert row.latency_reduction_pct == old.latency_reduction_pct  # the same batches, the same bootstrap seed
    assert row.calibration == old.calibration[:-1] + ", on h100-a)" and old.calibration.startswith("A/A band")


def test_older_results_of_different_machines_are_not_compared_across_runs(tmp_path):
    _older_results(tmp_path)
    _label_machines(tmp_path / "smoke", {W3_OFF: "h100-b"}, "h100-a")
    frames = analysis.load_profile(tmp_path, "smoke")
    by = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), compared("smoke")[2]) \
        .set_index("workload_number")
    assert by.loc[3].latency_reduction_pct_verdict == "not compared: not comparable"
    assert pd.isna(by.loc[3].latency_reduction_pct) and by.loc[3].reason.startswith("runs from different machines")
    assert by.loc[1].comparison == "across runs" and by.loc[1].machine == "h100-a"


def test_early_exit_baseline_of_another_machine_gives_no_dram_change(tmp_path):
    shutil.copytree(RESULTS / "full", tmp_path / "full")
    base = "run1_r36_t128_temp0.0_thresh0.0"
    _label_machines(tmp_path / "full", {base: "h100-b"}, "h100-a")
    frames = analysis.load_profile(tmp_path, "full")
    aa = arms.calibration(arms.within_run(frames))
    ee = compare.compare_early_exit(frames, pairing.pair_early_exit(frames.runs), aa).set_index("run_id")
    run3 = ee.loc["run3_r36_t128_temp0.0_thresh0.5"]
    assert run3.pair_status == "not comparable" and pd.isna(run3.dram_write_reduction_pct)
    assert run3.comparison == "within run"  # its own threshold-0.0 arm, same engines: still compared
    assert compared("full")[4].set_index("run_id").loc["run3_r36_t128_temp0.0_thresh0.5"] \
        .dram_write_reduction_pct == pytest.approx(15.0, abs=1e-3)


def _aa(*bands):
    return pd.DataFrame([{"run_id": f"aa_{machine}", "machine": machine, "design": "within-engine",
                          "method": stats.HIERARCHICAL, "arm": "A2", "reference_arm": "A",
                          "latency_change_pct_ci_low": low, "latency_change_pct_ci_high": high,
                          "throughput_change_pct_ci_low": low, "throughput_change_pct_ci_high": high}
                         for machine, low, high in bands])


def test_the_aa_band_comes_from_the_comparisons_machine_only():
    aa = _aa(("m1", -3.0, 3.0), ("m2", -10.0, 8.0))
    assert arms.aa_band(aa, "within-engine", machine="m1") == ((-3.0, 3.0),
                                                               "A/A band -3.0 to +3.0% (within-engine, aa_m1, on m1)")
    assert arms.aa_band(aa, "within-engine", machine="m2")[0] == (-10.0, 8.0)
    assert arms.aa_band(aa, "within-engine", machine="m3") == (
        None, "no A/A calibration on this machine (m3): the within-engine A/A runs come from m1, m2")
    # An unknown machine (older results) takes every A/A run, as before machines were recorded.
    for unknown in (None, "unknown"):
        assert arms.aa_band(aa, "within-engine", machine=unknown)[0] == (-10.0, 8.0)
    # A/A runs of unknown machines calibrate no comparison of a known one.
    assert arms.aa_band(_aa(("unknown", -3.0, 3.0)), "within-engine", machine="m1")[0] is None
    rows = pd.DataFrame({"machine": ["m1", "m2"]})
    assert arms.rows_band(aa, rows, "within-engine")[0] is None
    assert arms.rows_band(aa, rows[:1], "within-engine")[0] == (-3.0, 3.0)


def test_a_verdict_uses_no_other_machines_band():
    frames = tiny_frames([[1.0, 1.01], [2.0, 2.02]], [[0.98, 0.99], [1.96, 1.98]])
    for machine, verdict, calibration in (
            ("m1", arms.NOT_ESTABLISHED, "A/A band -3.0 to +3.0% (within-engine, aa_m1, on m1)"),
            ("m3", "improvement (no A/A band)", "no A/A calibration on this machine (m3): the within-engine A/A "
                                                "runs come from m1")):
        frames.runs["machine"] = machine
        row = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), _aa(("m1", -3.0, 3.0))).iloc[0]
        assert (row.latency_reduction_pct_verdict, row.calibration, row.machine) == (verdict, calibration, machine)


def test_h100_session6_without_machines_compares_as_before():
    """Results written before env.machine_id: machine "unknown", numbers and bands as the committed report."""
    root = Path(__file__).resolve().parents[1] / "outputs" / "gpu-h100-protocol" / "session6"
    frames = analysis.load_profile(root, "gpu-smoke", expected=grid.planned_run_ids("gpu-smoke"))
    measured = frames.runs[frames.runs.status != "missing"]
    assert len(measured) == 10 and set(measured.machine) == {"unknown"}
    assert frames.runs[frames.runs.status == "missing"].machine.isna().all()
    aa = arms.calibration(arms.within_run(frames))
    adaptive = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), aa).set_index("workload_number")
    w3 = adaptive.loc[3]
    assert (w3.latency_reduction_pct, w3.latency_reduction_pct_ci_low, w3.latency_reduction_pct_ci_high) == \
        pytest.approx((11.395, 8.707, 14.086), abs=1e-3)  # README: -11.4 % latency (-14.1 to -8.7)
    assert w3.calibration == "A/A band -5.4 to +8.6% (within-engine, aa_run3_r36_t128_temp0.0_d10_within)"
    assert adaptive.loc[5].latency_reduction_pct == pytest.approx(28.358, abs=1e-3)
    assert pairing.pair_adaptive(frames.runs).set_index("workload_number").loc[3].status == "ok"
