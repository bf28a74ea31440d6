"""Tests for nwor.findings: key numbers lead with the A/A calibration and name method and instances."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nwor import analysis, arms, compare, determinism, findings, pairing, stats, views

RESULTS = Path(__file__).parent / "fixtures" / "results"
EXACT = 1e-9


def pipeline(root, profile: str):
    frames = analysis.load_profile(root, profile)
    within = arms.within_run(frames)
    aa = arms.calibration(within)
    adaptive = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), aa)
    early_exit = compare.compare_early_exit(frames, pairing.pair_early_exit(frames.runs), aa)
    overhead = compare.compare_arms(within, aa)
    same = determinism.check_determinism(frames)
    return frames, aa, adaptive, early_exit, overhead, same


@functools.lru_cache(maxsize=None)
def fixture(profile: str):
    return pipeline(RESULTS, profile)


def test_key_numbers_lead_with_the_aa_calibration_and_name_method_and_instances():
    numbers = findings.key_numbers(*fixture("full"))
    assert numbers.key.is_unique
    assert list(numbers.key[:4]) == [f"calibration.aa_run3_r36_t128_temp0.0_d10_{design}.{m}_change_pct"
                                     for design in ("engines", "within") for m in ("latency", "throughput")]
    with_ci = numbers[numbers.ci_low.notna() & (numbers.key != "adaptive.correlation_r")]
    assert (with_ci.method == stats.HIERARCHICAL).all()
    assert with_ci.instances.str.contains("instances").all()


def test_mean_over_workloads():
    frames, aa, adaptive, *_ = fixture("full")
    numbers = findings.key_numbers(*fixture("full")).set_index("key")
    mean = numbers.loc["adaptive.mean.latency_reduction_pct"]
    assert mean.value == pytest.approx(adaptive.latency_reduction_pct.mean(), abs=EXACT)
    assert mean.ci_low < mean.value < mean.ci_high and "W6 long form left out" in mean.basis
    assert mean.instances == "21 vs 21 instances in all"  # 7 workloads x 3 paired instances
    assert numbers.loc["determinism.pairs_differing"].value == 1
    assert numbers.loc["runs.not_measured"].value == 2


def test_without_an_aa_run_the_report_says_so_first(tmp_path):
    shutil.copytree(RESULTS / "full", tmp_path / "full")
    shutil.rmtree(tmp_path / "full" / "calibration_grid")
    frames, aa, adaptive, early_exit, overhead, same = pipeline(tmp_path, "full")
    numbers = findings.key_numbers(frames, aa, adaptive, early_exit, overhead, same)
    assert numbers.iloc[0].key == "calibration.none" and numbers.iloc[0].verdict.startswith("NO A/A RUN")
    assert views.calibration_summary(aa).startswith("**No A/A run was measured in this profile.**")
    verdicts = adaptive.latency_reduction_pct_verdict.dropna()
    assert verdicts.str.contains("improvement").any()
    assert all(v.endswith("(no A/A band)") for v in verdicts if v.startswith(("improvement", "regression")))


def full_on_two_machines(tmp_path, on_a1) -> Path:
    """A copy of the `full` fixture whose results `on_a1(path)` picks ran on machine a1a1..., the rest on b2b2...."""
    shutil.copytree(RESULTS / "full", tmp_path / "full")
    for path in (tmp_path / "full").glob("*/*.json"):
        doc = json.loads(path.read_text())
        doc["env"]["machine_id"] = "a1" * 6 if on_a1(path) else "b2" * 6
        path.write_text(json.dumps(doc))
    return tmp_path


def test_the_mean_over_workloads_uses_only_bands_of_the_comparisons_machines(tmp_path):
    full_on_two_machines(tmp_path, lambda path: path.parent.name == "calibration_grid")  # the A/A runs alone on a1
    frames, aa, adaptive, early_exit, overhead, same = pipeline(tmp_path, "full")
    mean = findings.key_numbers(frames, aa, adaptive, early_exit, overhead, same).set_index("key").loc[
        "adaptive.mean.latency_reduction_pct"]
    assert mean.basis.startswith("no A/A calibration on this machine (b2b2b2b2b2b2): the within-engine A/A runs "
                                 "come from a1a1a1a1a1a1")
    assert mean.verdict.endswith("(no A/A band)")
    before = findings.key_numbers(*fixture("full")).set_index("key").loc["adaptive.mean.latency_reduction_pct"]
    assert mean.value == before.value and before.basis.startswith("A/A band")
    assert "**Runs from 2 machines.**" in views.run_summary(frames)
    assert views.machines(frames).to_dict("records") == [{"machine": "b2b2b2b2b2b2", "runs": 27},
                                                         {"machine": "a1a1a1a1a1a1", "runs": 3}]
    assert views.machines(fixture("full")[0]) is None and "machines" not in views.run_summary(fixture("full")[0])


def test_a_mean_with_a_band_for_some_workloads_is_judged_by_those_bands(tmp_path):
    # Two H200 sessions at tensor parallel 2: W5 (28 % faster, "not established" against its machine's A/A
    # band) and W3 from a machine without an A/A run. The mean must not read "improvement".
    study = findings.key_numbers(*pipeline(Path(__file__).parents[1] / "outputs" / "gpu-tp2-study",
                                           "gpu-smoke-tp2")).set_index("key")
    assert study.loc["adaptive.W5.latency_reduction_pct"].verdict == arms.NOT_ESTABLISHED
    assert study.loc["adaptive.W3.latency_reduction_pct"].verdict == arms.NOISE
    mean = study.loc["adaptive.mean.latency_reduction_pct"]
    assert 0 < mean.ci_low and mean.verdict == arms.NOT_ESTABLISHED
    # Where the known band is clear of the interval, the verdict stands and says what calibrated it.
    full_on_two_machines(tmp_path, lambda path: path.parent.name == "calibration_grid"  # the A/A, W1 and W2 on a1
                         or path.name.startswith(("run1_", "run2_")))
    mixed = findings.key_numbers(*pipeline(tmp_path, "full")).set_index("key")
    assert mixed.loc["adaptive.mean.latency_reduction_pct"].verdict == f"improvement {arms.PARTLY_CALIBRATED}"
    assert mixed.loc["adaptive.W3.latency_reduction_pct"].verdict == f"improvement {arms.UNCALIBRATED}"


def test_recommendations_rest_on_the_numbers():
    _, _, adaptive, early_exit, _, same = fixture("full")
    rec = findings.recommend(adaptive, early_exit, same).set_index("workload")
    assert rec.loc["W1 short burst"].adaptive_draft_length == "on"
    assert "3 paired instances" in rec.loc["W1 short burst"].adaptive_reason
    assert rec.loc["W3 medium interactive"].adaptive_draft_length == "off"  # outputs differ at temperature 0
    assert rec.loc["W8 large draft"].adaptive_draft_length == "off"
    assert rec.loc["W6 long form"].adaptive_draft_length == "no recommendation"
    assert rec.loc["W1 short burst"].confidence_threshold == 0.5  # 0.7 costs more than +2 % latency
    assert "threshold 0.7" not in rec.loc["W1 short burst"].threshold_reason
    strict = findings.recommend(adaptive, early_exit, same, max_latency_overhead_pct=0.1)
    assert (strict.confidence_threshold.dropna() == 0.0).all()
    smoke = findings.recommend(*[fixture("smoke")[i] for i in (2, 3, 5)]).set_index("workload")
    assert "no DRAM data" in smoke.loc["W1 short burst"].threshold_reason


def test_only_failed_runs_give_empty_findings_not_errors(tmp_path):
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    for path in (tmp_path / "smoke").glob("*/*.json"):
        path.write_text(path.read_text().replace('"status":"ok"', '"status":"failed"'))
    frames, aa, adaptive, early_exit, overhead, same = pipeline(tmp_path, "smoke")
    numbers = findings.key_numbers(frames, aa, adaptive, early_exit, overhead, same)
    assert numbers.set_index("key").loc["runs.not_measured"].value == len(frames.runs)
    assert (findings.recommend(adaptive, early_exit, same).adaptive_draft_length == "no recommendation").all()
    assert views.run_summary(frames).startswith("**No run was measured**")
    assert pd.isna(findings.acceptance_correlation(adaptive).r)
