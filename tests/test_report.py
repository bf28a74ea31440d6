"""Tests for nwor.report: profile checks, and renders that never leave an older report looking current."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from nwor import report
from nwor.errors import ConfigError, RunFailed

TESTS = Path(__file__).parent
RESULTS = TESTS / "fixtures" / "results"


def stale_report(root: Path, profile: str) -> Path:
    """An older report folder, as a previous render would have left it."""
    folder = root / profile / "report"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>an older report</html>")
    (folder / "latency_by_workload.png").write_bytes(b"old figure")
    return folder


def test_unknown_profile_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^unknown profile 'nope' \(known: .*smoke") as err:
        report.check_profile("nope", tmp_path)
    assert "\n" not in str(err.value)


def test_known_profile_without_outputs_says_run_it_first(tmp_path):
    with pytest.raises(ConfigError, match="no outputs for profile 'smoke'.*nwor run --profile smoke"):
        report.check_profile("smoke", tmp_path)


def test_any_profile_with_results_is_accepted_and_an_empty_one_is_not(tmp_path):
    (tmp_path / "adhoc" / "adhoc").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no result JSONs under"):
        report.check_profile("adhoc", tmp_path)
    (tmp_path / "adhoc" / "adhoc" / "run.json").write_text("{}")
    assert report.check_profile("adhoc", tmp_path) == tmp_path / "adhoc"


def test_report_renders_with_only_failed_runs_and_replaces_the_old_one(tmp_path):
    pytest.importorskip("papermill", reason="papermill renders the report")
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    for path in (tmp_path / "smoke").glob("*/*.json"):
        path.write_text(path.read_text().replace('"status":"ok"', '"status":"failed"'))
    (tmp_path / "smoke" / "adaptive_grid" / "run1_r12_t64_temp0.0_d10_adaptive0.json").write_text("{ corrupt")
    folder = stale_report(tmp_path, "smoke")
    html = report.render_report("smoke", tmp_path)
    assert html == folder / "report.html"
    body = html.read_text()
    assert "No run was measured" in body and "an older report" not in body
    assert "smoke/adaptive_grid/run1_r12_t64_temp0.0_d10_adaptive0.json" in body  # the corrupt file is listed
    assert (folder / "latency_by_workload.png").read_bytes() != b"old figure"
    assert not (tmp_path / "smoke" / report.STAGING_FOLDER).exists()


def test_a_failed_render_leaves_no_older_report_behind(tmp_path, monkeypatch):
    pytest.importorskip("papermill", reason="papermill renders the report")
    broken = nbformat.read(TESTS.parent / "notebooks" / "report.ipynb", as_version=4)
    cell = next(i for i, c in enumerate(broken.cells) if "parameters" in c.metadata.get("tags", []))
    broken.cells.insert(cell + 1, nbformat.v4.new_code_cell('raise RuntimeError("analysis broke")'))
    notebook = tmp_path / "report.ipynb"
    nbformat.write(broken, notebook)
    monkeypatch.setattr(report, "REPORT_NOTEBOOK", notebook)
    shutil.copytree(RESULTS / "smoke", tmp_path / "smoke")
    folder = stale_report(tmp_path, "smoke")
    with pytest.raises(RunFailed, match="report for smoke failed: RuntimeError: analysis broke"):
        report.render_report("smoke", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["report.ipynb"]  # the failed notebook, to read
    assert not (tmp_path / "smoke" / report.STAGING_FOLDER).exists()
