"""Tests for nwor.stats and nwor.analysis on hand-computed cases and the synthetic fixture results."""
from __future__ import annotations

import ast
import filecmp
import functools
import importlib.util
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from nwor import analysis, stats
from nwor.errors import SchemaError

TESTS = Path(__file__).parent
RESULTS = TESTS / "fixtures" / "results"
NOTEBOOK = TESTS.parent / "notebooks" / "report.ipynb"
EXACT = 1e-9  # tolerance for hand-computed percentages: only float rounding may differ


@functools.lru_cache(maxsize=None)
def report(profile: str):
    frames = analysis.load_profile(RESULTS, profile)
    adaptive = stats.compare_adaptive(frames, analysis.pair_adaptive(frames.runs))
    early_exit = stats.compare_early_exit(frames, analysis.pair_early_exit(frames.runs))
    determinism = analysis.check_determinism(frames)
    return frames, adaptive, early_exit, determinism


def tiny_frames(baseline_latencies, treatment_latencies, baseline_hashes=None, treatment_hashes=None):
    """Two adaptive-grid runs of one workload, built by hand."""
    runs, batches = [], []
    for flag, latencies, hashes in ((0, baseline_latencies, baseline_hashes),
                                    (1, treatment_latencies, treatment_hashes)):
        run_id = f"run3_r2_t8_temp0.0_d4_adaptive{flag}"
        runs.append({"run_id": run_id, "grid": "adaptive_grid", "status": "ok", "reason": None,
                     "workload_number": 3, "label": "W3 tiny", "temperature": 0.0, "num_prompts": 2,
                     "max_tokens": 8, "adaptive": bool(flag), "confidence_threshold": 0.0,
                     "spec_num_draft_tokens": 100 - 20 * flag, "draft_acceptance_rate": 0.5,
                     "feature_impl": "nwor-plugin" if flag else "none", "vllm": "vLLM test"})
        for batch, latency in enumerate(latencies):
            batches.append({"run_id": run_id, "grid": "adaptive_grid", "batch": batch, "latency_s": latency,
                            "output_tokens_per_s": 16 / latency,
                            "output_hashes": (hashes or [["a", "b"]] * len(latencies))[batch]})
    return analysis.Frames(pd.DataFrame(runs), pd.DataFrame(batches), pd.DataFrame())


# --- nwor.stats -------------------------------------------------------------------------------------------

def test_hand_computed_reduction_is_ten_percent_with_a_point_ci():
    estimate = stats.percent_change_ci([1, 1, 1], [0.9, 0.9, 0.9]).negated()
    assert estimate.value == pytest.approx(10.0, abs=EXACT)
    assert estimate.ci_low == estimate.ci_high == pytest.approx(10.0, abs=EXACT)
    assert stats.verdict(estimate) == "improvement"


def test_bootstrap_of_constant_data_is_a_point():
    estimate = stats.mean_ci([2.5, 2.5, 2.5, 2.5])
    assert (estimate.value, estimate.ci_low, estimate.ci_high) == (2.5, 2.5, 2.5)


def test_bootstrap_is_reproducible_and_depends_on_the_seed():
    rng = np.random.default_rng(1)
    b, t = rng.normal(1.0, 0.05, 20), rng.normal(0.95, 0.05, 20)
    assert stats.percent_change_ci(b, t) == stats.percent_change_ci(b, t)
    assert stats.percent_change_ci(b, t, seed=1).ci_low != stats.percent_change_ci(b, t, seed=2).ci_low


def test_ci_covers_a_known_effect_and_noise_is_inside_the_noise():
    rng = np.random.default_rng(7)
    base = rng.normal(10.0, 0.1, 200)
    faster = stats.percent_change_ci(base, base * 0.8).negated()
    assert faster.ci_low < 20.0 + EXACT and faster.ci_high > 20.0 - EXACT
    same = stats.percent_change_ci(base, rng.normal(10.0, 0.1, 200))
    assert same.ci_low < 0 < same.ci_high
    assert stats.verdict(same) == "inside the noise (CI includes 0)"


def test_one_sample_gives_no_ci_and_says_so():
    estimate = stats.percent_change_ci([1.0], [0.9, 0.8])
    assert estimate.value == pytest.approx(-15.0, abs=EXACT)
    assert not estimate.has_ci and "no CI" in stats.verdict(estimate)


@pytest.mark.parametrize("low, high, better, expected", [
    (1, 2, "higher", "improvement"), (-2, -1, "higher", "regression"), (1, 2, "lower", "regression"),
    (-2, -1, "lower", "improvement"), (-1, 1, "higher", "inside the noise (CI includes 0)"),
    (0, 1, "higher", "inside the noise (CI includes 0)")])
def test_verdict(low, high, better, expected):
    assert stats.verdict(stats.Estimate((low + high) / 2, low, high), better) == expected


def test_verdict_rejects_unknown_direction():
    with pytest.raises(ValueError, match="better"):
        stats.verdict(stats.Estimate(1, 0, 2), "sideways")


@pytest.mark.parametrize("baseline, treatment", [([], [1.0]), ([0.0, 0.0], [1.0, 1.0]), ([1.0, math.nan], [1.0])])
def test_percent_change_rejects_bad_input(baseline, treatment):
    with pytest.raises(ValueError):
        stats.percent_change_ci(baseline, treatment)


def test_mean_over_workloads_weights_workloads_equally():
    groups = [([1, 1, 1], [0.9, 0.9, 0.9]), ([2, 2, 2, 2, 2, 2], [1.6] * 6)]
    estimate = stats.mean_percent_change_ci(groups).negated()
    assert estimate.value == pytest.approx(15.0, abs=EXACT)  # (10 + 20) / 2, not weighted by sample count
    assert estimate.ci_low == pytest.approx(15.0, abs=EXACT) and estimate.ci_high == pytest.approx(15.0, abs=EXACT)


def test_correlation():
    perfect = stats.correlation_ci([1, 2, 3, 4], [2, 4, 6, 8])
    assert perfect.r == pytest.approx(1.0, abs=EXACT) and perfect.ci_low == pytest.approx(1.0, abs=EXACT)
    assert math.isnan(stats.correlation_ci([1, 1, 1], [1, 2, 3]).r)
    assert "need 3" in stats.correlation_ci([1, 2], [1, 2]).note


# --- loading ----------------------------------------------------------------------------------------------

def test_parse_run_id():
    assert analysis.parse_run_id("run3_r36_t128_temp0.0_d10_adaptive1") == {
        "workload_number": 3, "num_prompts": 36, "max_tokens": 128, "temperature": 0.0,
        "num_speculative_tokens": 10, "adaptive": True}
    assert analysis.parse_run_id("run7_r36_t256_temp0.0_thresh0.5") == {
        "num_prompts": 36, "max_tokens": 256, "temperature": 0.0, "confidence_threshold": 0.5}
    assert analysis.parse_run_id("scenario_b_chatbot") == {}


def test_load_profile_keeps_every_run_with_its_reason():
    frames = report("smoke")[0]
    assert len(frames.runs) == 27
    assert frames.runs.groupby("grid").size().to_dict() == {"adaptive_grid": 16, "early_exit_grid": 7,
                                                            "oneoff_scenarios": 4}
    not_ok = frames.runs[frames.runs.status != "ok"].set_index("run_id")
    assert not_ok.status.to_dict() == {"run6_r32_t256_temp0.7_d10_adaptive1": "failed",
                                       "scenario_d_creative_writing": "refused"}
    assert "OutOfMemoryError" in not_ok.reason["run6_r32_t256_temp0.7_d10_adaptive1"]
    assert len(frames.batches) == 25 * 3 and set(frames.batches.run_id) == set(frames.runs.run_id[
        frames.runs.status == "ok"])
    assert len(frames.requests) == frames.batches.num_requests.sum()


def test_loader_reads_the_seed_jq_paths():
    path = RESULTS / "full" / "early_exit_grid" / "run3_r36_t128_temp0.0_thresh0.5.json"
    doc = json.loads(path.read_text())
    run = report("full")[0].runs.set_index("run_id").loc[path.stem]
    assert run.latency_avg_s == doc["summary"]["per_mode"][0]["latency_avg_s"]
    assert run.dram_bytes_write == doc["summary"]["per_mode"][0]["ncu_metrics"]["dram__bytes_write.sum"]
    assert run.workload_number == doc["workload"]["number"]


def test_expected_runs_without_a_file_are_missing_rows():
    frames = analysis.load_profile(RESULTS, "smoke", expected={"adaptive_grid": ["run9_r4_t64_temp0.0_d5_adaptive0"]})
    row = frames.runs.set_index("run_id").loc["run9_r4_t64_temp0.0_d5_adaptive0"]
    assert row.status == "missing" and "no " in row.reason and row.workload_number == 9
    pairs = analysis.pair_adaptive(frames.runs).set_index("workload_number")
    assert pairs.loc[9].status == "unpaired" and "expected run9_r4_t64_temp0.0_d5_adaptive1" in pairs.loc[9].reason


def write_variant(tmp_path, change):
    source = RESULTS / "smoke" / "adaptive_grid" / "run3_r36_t128_temp0.0_d10_adaptive1.json"
    doc = json.loads(source.read_text())
    change(doc)
    folder = tmp_path / "smoke" / "adaptive_grid"
    folder.mkdir(parents=True)
    (folder / source.name).write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=2), "schema_version 2"),
    (lambda d: d.update(run_id="other"), "must match the file name"),
    (lambda d: d.update(results=[]), "needs results"),
    (lambda d: d["workload"].update(number=4), "workload number is 4 in the JSON but 3 in the run id"),
    (lambda d: [r["sampling_params"].update(temperature=0.7) for r in d["results"]], "temperature")])
def test_schema_problems_raise(tmp_path, change, message):
    with pytest.raises(SchemaError, match=message):
        analysis.load_profile(write_variant(tmp_path, change), "smoke")


def test_empty_profile_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        analysis.load_profile(tmp_path, "smoke")


def test_fixtures_match_their_generator(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_results", TESTS / "fixtures" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path / "results")
    module.main()
    comparison = filecmp.dircmp(RESULTS, tmp_path / "results")
    stale = [(comparison, "")]
    while stale:
        node, prefix = stale.pop()
        assert not (node.left_only or node.right_only or node.diff_files), (prefix, node.left_only,
                                                                            node.right_only, node.diff_files)
        stale += [(sub, f"{prefix}/{name}") for name, sub in node.subdirs.items()]


# --- pairing, comparisons, determinism, recommendations ---------------------------------------------------

def test_pair_adaptive_reports_the_failed_workload():
    pairs = report("smoke")[0].runs.pipe(analysis.pair_adaptive).set_index("workload_number")
    assert list(pairs.index) == list(range(1, 9))
    assert (pairs.drop(6).status == "ok").all()
    assert pairs.loc[6].status == "not measured" and "failed" in pairs.loc[6].reason
    assert pairs.loc[3].treatment_run_id == pairs.loc[3].baseline_run_id.replace("_adaptive0", "_adaptive1")


def test_pair_early_exit_leaves_run7_unpaired():
    pairs = analysis.pair_early_exit(report("smoke")[0].runs).set_index("treatment_run_id")
    assert len(pairs) == 5
    run7 = pairs.loc["run7_r36_t256_temp0.0_thresh0.5"]
    assert run7.status == "unpaired" and pd.isna(run7.baseline_run_id) and "max_tokens=256" in run7.reason
    assert pairs.loc["run6_r36_t128_temp0.7_thresh0.5"].baseline_run_id == "run5_r36_t128_temp0.7_thresh0.0"
    assert (pairs.drop("run7_r36_t256_temp0.0_thresh0.5").baseline_run_id == pd.Series(
        ["run1_r36_t128_temp0.0_thresh0.0"] * 3 + ["run5_r36_t128_temp0.7_thresh0.0"],
        index=pairs.index[:4])).all()


def test_compare_adaptive_hand_computed():
    frames = tiny_frames([1, 1, 1], [0.9, 0.9, 0.9])
    row = stats.compare_adaptive(frames, analysis.pair_adaptive(frames.runs)).iloc[0]
    assert row.latency_reduction_pct == pytest.approx(10.0, abs=EXACT)
    assert row.latency_reduction_pct_ci_low == row.latency_reduction_pct_ci_high
    assert row.throughput_improvement_pct == pytest.approx(100 / 9, abs=EXACT)  # 16/0.9 vs 16/1
    assert row.draft_token_reduction_pct == pytest.approx(20.0, abs=EXACT)  # 100 -> 80 draft tokens
    assert row.latency_reduction_pct_verdict == "improvement" and row.n_samples == "3 vs 3"


def test_compare_adaptive_per_request_level_needs_requests():
    frames, *_ = report("smoke")
    by_request = stats.compare_adaptive(frames, analysis.pair_adaptive(frames.runs), level="request")
    assert by_request.n_samples.iloc[2] == "108 vs 108"  # W3: 36 requests x 3 batches
    with pytest.raises(ValueError, match="level"):
        stats.compare_adaptive(frames, analysis.pair_adaptive(frames.runs), level="token")


def test_early_exit_dram_reduction_and_missing_ncu():
    full = report("full")[2].set_index("run_id")
    assert full.loc["run3_r36_t128_temp0.0_thresh0.5"].dram_write_reduction_pct == pytest.approx(15.0, abs=1e-6)
    assert full.loc["run3_r36_t128_temp0.0_thresh0.5"].stop_pct == pytest.approx(12.0, abs=0.01)
    assert pd.isna(full.loc["run7_r36_t256_temp0.0_thresh0.5"].latency_overhead_pct)
    smoke = report("smoke")[2].set_index("run_id")
    assert smoke.dram_bytes_write.isna().all()
    assert "ncu unavailable" in smoke.loc["run3_r36_t128_temp0.0_thresh0.5"].dram_reason


def test_determinism_surfaces_the_differing_pair():
    determinism = report("smoke")[3].set_index("treatment_run_id")
    differs = determinism[determinism.status == "differs"]
    assert list(differs.index) == ["run4_r36_t512_temp0.0_d10_adaptive1"]
    assert differs.iloc[0].n_differ == 1 and differs.iloc[0].n_requests == 108
    assert determinism.loc["run7_r8_t256_temp0.7_d8_adaptive1"].status == "not required"
    assert determinism.loc["run6_r32_t256_temp0.7_d10_adaptive1"].status == "not measured"
    assert determinism.loc["run3_r36_t128_temp0.0_thresh0.5"].status == "identical"


def test_determinism_counts_missing_outputs_as_differences():
    frames = tiny_frames([1, 1], [1, 1], [["a", "b"], ["c", "d"]], [["a", "x"], ["c"]])
    row = analysis.check_determinism(frames).iloc[0]
    assert (row.n_requests, row.n_differ, row.status) == (4, 2, "differs")


def test_recommendations_rest_on_the_numbers():
    _, adaptive, early_exit, determinism = report("full")
    rec = analysis.recommend(adaptive, early_exit, determinism).set_index("workload")
    assert rec.loc["W3 medium interactive"].adaptive_draft_length == "on"
    assert "latency reduction +" in rec.loc["W3 medium interactive"].adaptive_reason
    assert rec.loc["W4 medium long-form"].adaptive_draft_length == "off"  # outputs differ at temperature 0
    assert "inside the noise" in rec.loc["W5 batch short"].adaptive_reason
    assert rec.loc["W8 code completion"].adaptive_draft_length == "off"
    assert rec.loc["W6 batch sampled"].adaptive_draft_length == "no recommendation"
    assert rec.loc["W3 medium interactive"].confidence_threshold == 0.5  # 0.7 costs > 2 % latency
    assert "threshold 0.7" not in rec.loc["W3 medium interactive"].threshold_reason
    strict = analysis.recommend(adaptive, early_exit, determinism, max_latency_overhead_pct=0.1)
    assert (strict.confidence_threshold == 0.0).all()
    smoke = analysis.recommend(*report("smoke")[1:]).set_index("workload")
    assert smoke.loc["W3 medium interactive"].confidence_threshold == 0.0
    assert "no DRAM data" in smoke.loc["W3 medium interactive"].threshold_reason


def test_key_numbers_cover_the_report():
    frames, adaptive, early_exit, determinism = report("full")
    numbers = stats.key_numbers(frames, adaptive, early_exit, determinism).set_index("key")
    assert numbers.index.is_unique
    mean = numbers.loc["adaptive.mean.latency_reduction_pct"]
    assert mean.value == pytest.approx(adaptive.latency_reduction_pct.mean(), abs=EXACT)
    assert mean.ci_low < mean.value < mean.ci_high
    assert "W6 batch sampled left out" in mean.basis
    assert numbers.loc["determinism.pairs_differing"].value == 1
    assert numbers.loc["runs.not_measured"].value == 2
    assert "no baseline" in numbers.loc["early_exit.t256_temp0.0.threshold0.5.latency_overhead_pct"].verdict
    assert numbers.loc["early_exit.t128_temp0.0.threshold0.5.dram_write_reduction_pct"].value == pytest.approx(
        15.0, abs=1e-6)


# --- the report notebook ----------------------------------------------------------------------------------

def test_report_notebook_shape():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    body = ast.parse(tagged[0].source).body
    assert {t.id for node in body for t in node.targets} == {"profile", "outputs_root"}
    assert all(isinstance(node.value, ast.Constant) for node in body)
    assert all("#" in line for line in tagged[0].source.splitlines())
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert all(len(c.source.splitlines()) <= 10 and "def " not in c.source for c in code)
