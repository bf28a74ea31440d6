"""nwor.controller_trace (result documents -> trace frame) and nwor.plots_controller (the report figure)."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest

from nwor.controller_trace import FRAME_COLUMNS, trace_rows, traces_frame, unavailable_reason
from nwor.features import FeaturePlan
from nwor.plots_controller import NO_TRACES, plot_trajectory, show_trajectory
from nwor.plugin.trace import compact
from nwor.results import SCHEMA_VERSION, write_result
from nwor.settling import settling_table


def _trace(ewma, parts):
    n = len(ewma)
    columns = {"step": list(range(n)), "t_s": [0.01 * i for i in range(n)], "ewma": ewma,
               "draft_length": [8 if e > 0.5 else 5 for e in ewma], "drafted": [10] * n,
               "accepted": [round(10 * (0.8 if p == 0 else 0.3)) for p in parts], "tokens_stopped": [None] * n,
               "checks": [None] * n}
    first = [i for i in range(n) if i == 0 or parts[i] != parts[i - 1]]
    return {"status": "ok", **compact(columns), "dropped_steps": 0,
            "segments": [{"step": i, "round": k, "part": parts[i], "batch": k} for k, i in enumerate(first)]}


def _doc(run_id="ctl_shift", status="ok"):
    ewma, value = [], 0.8
    parts = [0] * 40 + [1] * 60
    for p in parts:
        ewma.append(value)
        value = 0.9 * value + 0.1 * (0.8 if p == 0 else 0.3)
    return {"schema_version": SCHEMA_VERSION, "status": status, "run_id": run_id, "grid": "controller_grid",
            "spec": {"ewma_alpha": 0.1}, "results": [{"batch": 0}], "metrics": {"mean_latency_s": 0.1},
            "summary": {"per_mode": [{"latency_avg_s": 0.1}]},
            "design": {"arms": [{"name": "run"}, {"name": "alpha0.2", "ewma_alpha": 0.2, "label": "alpha 0.2 (nwor)"},
                                {"name": "stock", "load_plugin": False}]},
            "replicates": [{"instance": 0, "controller_trace": {
                "run": _trace(ewma, parts), "alpha0.2": _trace(ewma, parts),
                "stock": {"status": "unavailable", "reason": unavailable_reason(None)}}}]}


def test_rows_carry_arm_alpha_label_and_part():
    rows = trace_rows(_doc())
    assert {r["arm"] for r in rows} == {"run", "alpha0.2"}  # the unavailable arm adds nothing, no zeros
    run = [r for r in rows if r["arm"] == "run"]
    assert len(run) == 100 and run[0]["ewma_alpha"] == 0.1 and run[0]["label"] == "run"
    assert [r["part"] for r in run[38:42]] == [0, 0, 1, 1]
    other = next(r for r in rows if r["arm"] == "alpha0.2")
    assert other["ewma_alpha"] == 0.2 and other["label"] == "alpha 0.2 (nwor)"


def test_unavailable_reasons_name_the_engine():
    assert "fork" in unavailable_reason(FeaturePlan(impl={"adaptive_draft_length": "native"}))
    assert "not loaded" in unavailable_reason(FeaturePlan(impl={"adaptive_draft_length": "off"}))


def test_frame_reads_a_profiles_ok_results_only(tmp_path):
    folder = tmp_path / "smoke" / "controller_grid"
    write_result(folder / "ctl_shift.json", _doc())
    write_result(folder / "ctl_failed.json", _doc("ctl_failed", status="failed"))
    (folder / "broken.json").write_text("{")
    frame = traces_frame(tmp_path, "smoke")
    assert list(frame.columns) == FRAME_COLUMNS and set(frame.run_id) == {"ctl_shift"} and len(frame) == 200
    table = settling_table(frame)
    assert list(table.settling_steps) == [22, 22]  # 0.5 × 0.9^22 < 0.05 (nwor.settling's closed form)
    assert traces_frame(tmp_path, "gpu-smoke").empty


def test_plot_draws_each_arm_or_says_there_are_no_traces(tmp_path):
    write_result(tmp_path / "smoke" / "controller_grid" / "ctl_shift.json", _doc())
    frame = traces_frame(tmp_path, "smoke")
    fig = plot_trajectory(frame)
    top, bottom = fig.axes
    assert len(top.lines) >= 2 and "ctl_shift" in fig._suptitle.get_text() and "shifts" in fig._suptitle.get_text()
    plt.close(fig)
    assert plot_trajectory(frame.iloc[0:0]) == NO_TRACES
    assert show_trajectory(frame.iloc[0:0], tmp_path / "figs").data == NO_TRACES
    show_trajectory(frame, tmp_path / "figs")
    assert (tmp_path / "figs" / "controller_trajectory.png").is_file()
