"""Tests for nwor.plots: every figure renders, carries its provenance footnote, and says "no data (reason)"."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests run headless

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from nwor import analysis, arms, compare, determinism, findings, pairing, plots, plots_early_exit, views  # noqa: E402

TESTS = Path(__file__).parent
RESULTS = TESTS / "fixtures" / "results"
NOTEBOOK = TESTS.parent / "notebooks" / "report.ipynb"


@functools.lru_cache(maxsize=None)
def report(profile: str):
    frames = analysis.load_profile(RESULTS, profile)
    within = arms.within_run(frames)
    aa = arms.calibration(within)
    adaptive = compare.compare_adaptive(frames, pairing.pair_adaptive(frames.runs), aa)
    early_exit = compare.compare_early_exit(frames, pairing.pair_early_exit(frames.runs), aa)
    overhead = compare.compare_arms(within, aa)
    numbers = findings.key_numbers(frames, aa, adaptive, early_exit, overhead, determinism.check_determinism(frames))
    return frames, adaptive, early_exit, numbers, aa, overhead


def texts(fig) -> str:
    found = [t.get_text() for t in fig.texts] + [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts + ax.get_yticklabels()] + [ax.get_title()]
        found += [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    return "\n".join(found)


def figures(profile: str) -> dict:
    frames, adaptive, early_exit, numbers, aa, overhead = report(profile)
    return {
        "calibration": plots.plot_calibration(aa, overhead),
        "latency_by_workload": plots.plot_latency_by_workload(adaptive, numbers, aa),
        "draft_tokens_acceptance": plots.plot_draft_tokens_and_acceptance(
            views.acceptance_by_workload(frames, "adaptive_grid")),
        "acceptance_per_position": plots.plot_acceptance_per_position(
            views.acceptance_per_position(frames, "adaptive_grid")),
        "acceptance_vs_improvement": plots.plot_acceptance_vs_improvement(adaptive),
        "threshold_tradeoff": plots_early_exit.plot_threshold_tradeoff(early_exit, aa),
        "kv_writes": plots_early_exit.plot_kv_writes(early_exit),
        "tokens_stopped": plots_early_exit.plot_tokens_stopped(early_exit),
    }


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("profile, build", [("smoke", "stock, cpu"), ("full", "stock, cuda")])
def test_every_figure_names_its_build_and_feature_impl(profile, build):
    for name, fig in figures(profile).items():
        note = fig.texts[-1].get_text()
        assert f"vLLM 0.32.0 ({build})" in note, name
        assert "feature_impl" in note, name
        assert "nwor-plugin" in note or name == "calibration", name


def test_footnote_names_what_was_not_measured():
    frames, adaptive, *_ = report("smoke")
    note = plots.footnote(adaptive).replace("\n", " ")
    assert "W6 long form: treatment run6_r36_t256_temp0.0_d10_adaptive1 failed" in note
    assert "7 of 8 rows measured" in plots.footnote(adaptive)
    per_position = views.acceptance_per_position(frames, "adaptive_grid")
    assert "15 of 16 rows measured" in plots.footnote(per_position)  # runs, not positions


def test_missing_ncu_totals_say_no_data_with_the_reason():
    smoke = texts(plots_early_exit.plot_threshold_tradeoff(report("smoke")[2]))
    assert "no data (ncu unavailable: no ncu on this machine (CPU build))" in smoke.replace("\n", " ")
    full = texts(plots_early_exit.plot_threshold_tradeoff(report("full")[2]))
    assert "no data" not in full and "0.5 (t128 temp0.0)" in full


def test_empty_frames_say_no_data():
    frames, adaptive, early_exit, *_ = report("smoke")
    empty_positions = views.acceptance_per_position(frames, "no_such_grid")
    assert "no data (acceptance_rate_per_pos is null" in texts(plots.plot_acceptance_per_position(empty_positions))
    no_stops = early_exit.assign(stop_pct=float("nan"))
    assert "no data" in texts(plots_early_exit.plot_tokens_stopped(no_stops))
    unmeasured = adaptive.assign(status="not measured", latency_reduction_pct=float("nan"))
    assert "no data" in texts(plots.plot_acceptance_vs_improvement(unmeasured))


def test_latency_figure_shows_verdicts_and_the_failed_workload():
    full = texts(figures("full")["latency_by_workload"])
    assert "not established (overlaps the A/A band)" in full and "improvement" in full and "regression" in full
    assert "A/A band (within-engine)" in full
    smoke = texts(figures("smoke")["latency_by_workload"])
    assert "no verdict" in smoke and "improvement" not in smoke  # one engine per arm on smoke
    assert "not measured: treatment run6" in smoke


def test_calibration_figure_shows_the_aa_bands_and_says_when_there_is_none():
    *_, aa, overhead = report("full")
    text = texts(plots.plot_calibration(aa, overhead))
    assert "A/A within-engine: run vs baseline" in text and "gate vs plugin_off (within-engine)" in text
    band = arms.aa_band(aa, "within-engine")[0]
    assert f"A/A band, within-engine: {band[0]:+.1f} to {band[1]:+.1f}%" in text
    assert "NO A/A RUN" in texts(plots.plot_calibration(aa.iloc[0:0]))
    assert "h100-a" not in text  # one machine: rows name none
    two = pd.concat([aa.assign(machine="h100-a"), aa.assign(machine="h100-b")], ignore_index=True)
    text = texts(plots.plot_calibration(two))  # an assembled study (nwor.study): each A/A row says whose it is
    assert "A/A within-engine: run vs baseline, h100-a" in text and "run vs baseline, h100-b" in text


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = plots_early_exit.plot_tokens_stopped(report("full")[2])
    paths = plots.save_figure(fig, tmp_path / "report", "tokens_stopped")
    assert [p.name for p in paths] == ["tokens_stopped.png", "tokens_stopped.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    assert not plt.fignum_exists(fig.number)


def test_report_notebook_executes_end_to_end(tmp_path):
    papermill = pytest.importorskip("papermill", reason="papermill renders the report")
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    out = tmp_path / "report.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"outputs_root": str(tmp_path),
                                                                     "profile": "smoke"},
                               cwd=str(TESTS.parent), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 8
    saved = sorted(p.name for p in (tmp_path / "smoke" / "report").iterdir())
    assert saved == sorted(f"{name}.{ext}" for name in figures("smoke") for ext in ("png", "svg"))


def test_draft_tokens_figure_stays_small_when_no_run_was_measured():
    # A profile with only calibration runs (e.g. an H100 session): every adaptive run is missing.
    frames, *_ = report("smoke")
    acceptance = views.acceptance_by_workload(frames, "adaptive_grid")
    missing = acceptance.assign(status="missing", reason="missing: no result", spec_num_draft_tokens=float("nan"),
                                draft_acceptance_rate=float("nan"))
    fig = plots.plot_draft_tokens_and_acceptance(missing)
    assert "no data (missing: no result" in texts(fig)
    assert fig.get_figheight() < 6 and all(not ax.texts or len(ax.texts) == 1 for ax in fig.axes)
