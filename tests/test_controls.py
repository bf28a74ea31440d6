"""nwor.controls on synthetic numbers: best static K and its ties, the statements, 'no controls results'."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nwor import controls, stats
from nwor.analysis import ARM_BATCH_COLUMNS, Frames, load_profile
from nwor.plots_controls import plot_controls

NAN = math.nan


def _row(k, mean, low=NAN, high=NAN):
    return {"k": k, "mean_latency_s": mean, "ci_low": low, "ci_high": high}


def test_pick_best_k_keeps_every_k_whose_interval_overlaps_the_best():
    rows = [_row(1, 2.0, 1.9, 2.1), _row(3, 1.0, 0.9, 1.1), _row(5, 1.05, 1.08, 1.2), _row(8, 1.3, 1.2, 1.4)]
    assert controls.pick_best_k(rows) == (3, [3, 5])


def test_pick_best_k_without_intervals_ties_nothing_and_equal_means_take_the_smaller_k():
    assert controls.pick_best_k([_row(3, 1.0), _row(5, 1.0), _row(8, 1.01)]) == (3, [3])
    assert controls.pick_best_k([]) == (None, [])
    # a K without its own interval ties only when its mean lies inside the best's interval
    assert controls.pick_best_k([_row(3, 1.0, 0.9, 1.1), _row(5, 1.05), _row(8, 1.2)]) == (3, [3, 5])


def test_control_of_names_every_arm():
    assert controls.control_of("controls_w", "run") == ("adaptive", None)
    assert controls.control_of("controls_w", "k15") == ("static", 15)
    assert controls.control_of("controls_w", "nospec") == ("nospec", None)
    assert controls.control_of("controls_w_dynamic_sd", "dynamic_sd") == ("dynamic_sd", None)
    assert controls.control_of("controls_w_dynamic_sd", "run") == ("adaptive", None)
    assert controls.workload_of("controls_w_dynamic_sd") == controls.workload_of("controls_w") == "w"


MEANS = {"nospec": 2.0, "k1": 1.6, "k3": 1.0, "k5": 1.02, "k8": 1.5, "run": 0.8}


def _frames(dynamic_status="ok", machines=(None, None)):
    rng = np.random.default_rng(1)
    batches = []
    for arm, mean in MEANS.items():
        for instance in range(3):
            batches += [{"run_id": "controls_w", "arm": arm, "instance": (arm, instance), "latency_s": mean + e}
                        for e in rng.normal(0, 0.01, 4)]
    if dynamic_status == "ok":
        for arm, mean in {"run": 0.8, "dynamic_sd": 1.0}.items():
            for instance in range(3):
                batches += [{"run_id": "controls_w_dynamic_sd", "arm": arm, "instance": (arm, instance),
                             "latency_s": mean + e} for e in rng.normal(0, 0.01, 4)]
    arm_batches = pd.DataFrame([{**b, "grid": controls.GRID, "num_output_tokens": 100, "output_tokens_per_s": None,
                                 "design": "engines-interleaved", "position": 0} for b in batches],
                               columns=ARM_BATCH_COLUMNS)
    runs = pd.DataFrame([
        {"run_id": "controls_w", "grid": controls.GRID, "status": "ok", "reason": None, "arms": list(MEANS),
         "workload_number": 3, "workload_name": "medium interactive", "path": "x"},
        {"run_id": "controls_w_dynamic_sd", "grid": controls.GRID, "status": dynamic_status,
         "reason": None if dynamic_status == "ok" else "refused: FeatureUnavailable: no Dynamic SD",
         "arms": ["run", "dynamic_sd"], "workload_number": 3, "workload_name": "medium interactive", "path": "y"}])
    runs["machine"] = machines  # the sweep's and the Dynamic SD run's
    empty = pd.DataFrame()
    return Frames(runs, arm_batches, empty, empty, empty)


def test_arm_latencies_mark_best_k_and_ties():
    lat = controls.arm_latencies(_frames())
    static = lat[lat.control == "static"].set_index("k")
    assert static.loc[3, "best"] and not static.loc[5, "best"]
    assert list(static[static.tied_with_best].index) == [3, 5]  # 1.00 vs 1.02 s, intervals overlap
    assert set(lat.control) == {"nospec", "static", "adaptive", "dynamic_sd"}
    assert (lat.instances == 3).all() and lat.ci_low.notna().all()
    best = controls.best_k(lat)
    assert best.best_k.tolist() == [3] and best.tied_ks.tolist() == [[3, 5]]


def test_statements_give_each_comparison_an_interval_and_verdict():
    said = controls.statements(_frames(), pd.DataFrame()).set_index("statement")
    adaptive = said.loc["adaptive vs best static K"]
    assert adaptive.latency_change_pct == pytest.approx(-20.0, abs=1.5)  # 0.8 s vs 1.0 s
    assert adaptive.ci_low < adaptive.latency_change_pct < adaptive.ci_high < 0
    assert adaptive.verdict.startswith("improvement") and adaptive.design == "engines-interleaved"
    assert said.loc["adaptive vs no speculation"].latency_change_pct == pytest.approx(-60.0, abs=1.5)
    assert said.loc["Dynamic SD vs best static K"].design == "across runs"
    assert said.loc["Dynamic SD vs best static K"].verdict == "inside the noise"
    assert said.loc["Dynamic SD vs adaptive"].verdict.startswith("regression")
    assert "adaptive vs K=3" in controls.summary(controls.arm_latencies(_frames()), said.reset_index())


def test_a_refused_dynamic_run_is_said_not_dropped():
    said = controls.statements(_frames("refused"), pd.DataFrame()).set_index("statement")
    assert said.loc["Dynamic SD vs adaptive"].verdict == "not available: refused: FeatureUnavailable: no Dynamic SD"
    assert said.loc["adaptive vs best static K"].verdict.startswith("improvement")


def test_dynamic_sd_of_another_machine_is_not_compared_with_the_sweep():
    aa = pd.DataFrame([{"run_id": "aa_a", "machine": "h100-a", "design": "engines-interleaved",
                        "method": stats.HIERARCHICAL, "latency_change_pct_ci_low": -1.0,
                        "latency_change_pct_ci_high": 1.0}])
    said = controls.statements(_frames(machines=("h100-a", "h100-b")), aa).set_index("statement")
    for across in ("Dynamic SD vs best static K", "Dynamic SD vs no speculation"):
        assert said.loc[across].verdict == "not comparable: runs from different machines: h100-a vs h100-b"
        assert pd.isna(said.loc[across].latency_change_pct) and said.loc[across].design == "across runs"
    # Arms of one run stay compared, each against its own machine's A/A band.
    assert said.loc["adaptive vs best static K"].band == "A/A band -1.0 to +1.0% (engines-interleaved, aa_a, on h100-a)"
    dynamic = said.loc["Dynamic SD vs adaptive"]
    assert dynamic.verdict.startswith("regression") and dynamic.band.startswith("no A/A calibration on this machine")
    same = controls.statements(_frames(machines=("h100-a", "h100-a")), aa).set_index("statement")
    assert same.loc["Dynamic SD vs best static K"].band.endswith("on h100-a)")


def test_no_controls_results_renders_cleanly():
    frames = _frames()
    frames = Frames(frames.runs.assign(grid="adaptive_grid"), frames.arm_batches, *([pd.DataFrame()] * 3))
    lat = controls.arm_latencies(frames)
    said = controls.statements(frames, pd.DataFrame(), lat)
    assert lat.empty and said.empty and controls.summary(lat, said) == controls.NO_RESULTS
    assert controls.tables(said, controls.schedules(frames, ".")) == []
    fig = plot_controls(lat)
    assert controls.NO_RESULTS in [t.get_text() for t in fig.axes[0].texts]


def test_plot_marks_the_best_k():
    fig = plot_controls(controls.arm_latencies(_frames()))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:2] == ["no spec", "K=1"] and "Dynamic SD" in labels and "adaptive" in labels


def test_controls_figure_saves_only_with_results(tmp_path):
    from nwor.plots_controls import controls_figure

    assert controls_figure(controls.arm_latencies(_frames()).iloc[0:0], tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
    assert controls_figure(controls.arm_latencies(_frames()), tmp_path) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["controls.png", "controls.svg"]


def test_plot_footnote_counts_the_engines_behind_the_bars():
    """H100 session 6: every arm had 2 engines, and some intervals are narrower than the marker."""
    root = Path(__file__).resolve().parents[1] / "outputs" / "gpu-h100-protocol" / "session6"
    lat = controls.arm_latencies(load_profile(root, "gpu-smoke"))
    note = " ".join(t.get_text() for t in plot_controls(lat).texts)
    assert "engine instances per arm: 2;" in note and "of one instance" not in note
    one = lat.assign(instances=lat.instances.where(lat.arm != "nospec", 1))
    assert "engine instances per arm: 1, 2; 3 arm(s) of one instance have no interval" in " ".join(
        t.get_text() for t in plot_controls(one).texts)
