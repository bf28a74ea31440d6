"""nwor.acceptance_sweep: per pinned acceptance level, the fastest static K and the adaptive arm's chosen
length, from result documents with known latencies."""
from __future__ import annotations

import pytest

from nwor.acceptance_sweep import arm_rows, sweep
from nwor.results import SCHEMA_VERSION, write_result

LATENCY = {"run": 1.00, "static_k10": 1.10, "static_k5": 0.90, "static_k2": 1.30}  # seconds per batch


def _doc(run_id, rate, latency=LATENCY, instances=3):
    arms = [{"name": "run"}, {"name": "static_k10", "adaptive_draft_length": False},
            {"name": "static_k5", "adaptive_draft_length": False, "num_speculative_tokens": 5},
            {"name": "static_k2", "adaptive_draft_length": False, "num_speculative_tokens": 2}]
    replicates = []
    for i in range(instances):
        batches = [{"arm": a, "position": p, "latency_s": latency[a] * (1 + 0.01 * ((p + i) % 3 - 1)),
                    "num_output_tokens": 100} for a in latency for p in range(4)]
        counters = {a: {"num_draft_tokens": 100, "num_accepted_tokens": int(100 * rate),
                        "plugin": {"draft_length_histogram": {"5": 30, "8": 10}} if a == "run" else None}
                    for a in latency}
        replicates.append({"instance": i, "batches": batches, "counters": counters})
    return {"schema_version": SCHEMA_VERSION, "status": "ok", "run_id": run_id, "grid": "controller_grid",
            "spec": {"synthetic_acceptance_rate": rate, "num_speculative_tokens": 10, "adaptive_draft_length": True},
            "design": {"arms": arms}, "replicates": replicates, "results": [{"batch": 0}],
            "metrics": {"mean_latency_s": 1.0}, "summary": {"per_mode": [{"latency_avg_s": 1.0}]}}


def test_arm_rows_read_k_acceptance_and_chosen_length():
    rows = {r["arm"]: r for r in arm_rows(_doc("ctl_synthetic_a0.5", 0.5))}
    assert rows["static_k5"]["num_speculative_tokens"] == 5 and rows["run"]["adaptive"] is True
    assert rows["run"]["mean_draft_length"] == pytest.approx((5 * 30 + 8 * 10) / 40)
    assert rows["static_k2"]["acceptance_measured"] == pytest.approx(0.5) and rows["static_k2"]["instances"] == 3
    assert rows["static_k2"]["mean_draft_length"] is None  # no plugin histogram: unknown, not zero
    assert arm_rows({**_doc("x", 0.5), "spec": {"synthetic_acceptance_rate": None}}) == []


def test_sweep_picks_the_fastest_static_k_per_level(tmp_path):
    folder = tmp_path / "gpu-smoke" / "controller_grid"
    write_result(folder / "ctl_synthetic_a0.8.json", _doc("ctl_synthetic_a0.8", 0.8,
                                                          {**LATENCY, "static_k10": 0.8}))
    write_result(folder / "ctl_synthetic_a0.2.json", _doc("ctl_synthetic_a0.2", 0.2))
    arms, levels = sweep(tmp_path, "gpu-smoke")
    assert len(arms) == 8 and list(levels.acceptance_pinned) == [0.2, 0.8]
    assert list(levels.best_static_k) == [5, 10]
    low = levels.iloc[0]
    assert low.adaptive_vs_best_static_latency_pct == pytest.approx((1.0 / 0.9 - 1) * 100, rel=0.02)
    assert low.adaptive_vs_best_static_latency_pct_ci_low > 0  # adaptive is slower than K = 5 at 0.2
    assert sweep(tmp_path, "smoke")[1].empty


def test_the_h100_sweep_and_its_figure():
    """Session 5's committed H100 sweep (8 levels): K = 2 wins at low acceptance, 10 at 0.9, and the controller
    never goes below 5 (the fork's options for K = 10 are {5, 8, 10}); the figure draws each level."""
    import matplotlib
    matplotlib.use("Agg")
    from pathlib import Path

    from nwor.plots_acceptance_sweep import NO_SWEEP, plot_acceptance_sweep

    root = Path(__file__).parents[1] / "outputs" / "gpu-h100-protocol" / "session5"
    arms, levels = sweep(root, "gpu-smoke-1x")
    assert list(levels.acceptance_pinned) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert list(levels.best_static_k) == [2, 2, 2, 2, 2, 5, 5, 10]
    assert levels.adaptive_mean_draft_length.min() == pytest.approx(5.0)
    fig = plot_acceptance_sweep(arms, levels)
    assert list(fig.axes[0].lines[1].get_ydata()) == [2, 2, 2, 2, 2, 5, 5, 10]
    assert len(fig.axes[1].lines) == 4  # adaptive and static K = 2, 5, 10
    assert plot_acceptance_sweep(arms.iloc[0:0], levels.iloc[0:0]) == NO_SWEEP
