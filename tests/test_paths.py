"""nwor.paths: every file of a run and of a report, spelled out from the run id (ids hold dots)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nwor.paths import ReportPaths, RunPaths, is_side_result, report_folder, run_dir

RUN_ID = "run3_r36_t128_temp0.0_thresh0.5"


def test_run_files_keep_the_dotted_run_id(tmp_path):
    paths = RunPaths.of("smoke", "early_exit_grid", RUN_ID, tmp_path)
    assert paths.folder == tmp_path.resolve() / "smoke" / "early_exit_grid"
    assert [p.name for p in (paths.result, paths.notebook, paths.vllm_log)] == [
        f"{RUN_ID}.json", f"{RUN_ID}.ipynb", f"{RUN_ID}.vllm.log"]
    assert paths.grid_log == paths.folder / "experiment.log"


def test_ncu_side_files_keep_thresh_0_5():
    ncu = RunPaths.from_result(f"outputs/p/early_exit_grid/{RUN_ID}.json").ncu()
    assert {k: getattr(ncu, k).name for k in ("report", "log", "pass_result", "vllm_log", "summary")} == {
        "report": f"{RUN_ID}.ncu-rep", "log": f"{RUN_ID}.ncu.log", "pass_result": f"{RUN_ID}.ncu-pass.json",
        "vllm_log": f"{RUN_ID}.ncu-pass.vllm.log", "summary": f"{RUN_ID}.ncu-summary.txt"}
    assert ncu.summary.parent == Path("outputs/p/early_exit_grid")
    # What Path.with_suffix would have made of the id: the bug this module exists to prevent.
    assert Path(RUN_ID).with_suffix(".ncu-summary.txt").name != ncu.summary.name


def test_kv_sub_pass_files():
    kv = RunPaths(Path("f"), RUN_ID).ncu("ncu-kv")
    assert (kv.report.name, kv.pass_result.name, kv.summary.name) == (
        f"{RUN_ID}.ncu-kv.ncu-rep", f"{RUN_ID}.ncu-kv-pass.json", f"{RUN_ID}.ncu-kv-summary.txt")
    with pytest.raises(ValueError, match="unknown ncu pass tag"):
        RunPaths(Path("f"), RUN_ID).ncu("ncu-other")


def test_from_result_round_trips():
    paths = RunPaths.of("smoke", "g", RUN_ID, "/x")
    assert RunPaths.from_result(paths.result) == paths


def test_side_results_are_not_runs():
    assert is_side_result(f"{RUN_ID}.ncu-pass.json") and is_side_result(f"{RUN_ID}.ncu-kv-pass.json")
    assert not is_side_result(f"{RUN_ID}.json")


def test_report_paths(tmp_path):
    paths = ReportPaths.of("smoke", tmp_path)
    assert paths.folder == tmp_path.resolve() / "smoke" / "report"
    assert paths.staging.parent == paths.folder.parent  # one filesystem: the final rename is atomic
    assert paths.executed.parent == paths.staging and paths.html == paths.folder / "report.html"
    assert report_folder("outputs", "smoke") == Path("outputs/smoke/report")  # relative stays relative
    assert run_dir("smoke", "g", tmp_path) == tmp_path.resolve() / "smoke" / "g"
