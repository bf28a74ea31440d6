"""Tests for nwor.analysis (loading and named views) on the fixture results, and the report notebook's shape."""
from __future__ import annotations

import ast
import filecmp
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from nwor import analysis, grid, views
from nwor.errors import SchemaError

TESTS = Path(__file__).parent
RESULTS = TESTS / "fixtures" / "results"
NOTEBOOK = TESTS.parent / "notebooks" / "report.ipynb"
W3_ON = "run3_r36_t128_temp0.0_d10_adaptive1"


def load(profile: str, root=RESULTS) -> analysis.Frames:
    return analysis.load_profile(root, profile)


def write_variant(tmp_path, change, name=W3_ON, grid_name="adaptive_grid"):
    """A copy of the smoke fixtures with one result changed by `change(doc)` (or replaced by text)."""
    root = tmp_path / "results"
    root.mkdir(exist_ok=True)
    if not (root / "smoke").exists():
        import shutil
        shutil.copytree(RESULTS / "smoke", root / "smoke")
    path = root / "smoke" / grid_name / f"{name}.json"
    if isinstance(change, str):
        path.write_text(change)
    else:
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))
    return root


def test_parse_run_id():
    assert analysis.parse_run_id("run3_r36_t128_temp0.0_d10_adaptive1") == {
        "workload_number": 3, "num_prompts": 36, "max_tokens": 128, "temperature": 0.0,
        "num_speculative_tokens": 10, "adaptive": True}
    assert analysis.parse_run_id("run7_r36_t256_temp0.0_thresh0.5") == {
        "num_prompts": 36, "max_tokens": 256, "temperature": 0.0, "confidence_threshold": 0.5}
    assert analysis.parse_run_id("scenario_b_chatbot") == {}


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_fixture_run_ids_are_the_planned_ones(profile):
    planned = {g: sorted(ids) for g, ids in grid.planned_run_ids(profile).items()}
    found = {folder.name: sorted(p.stem for p in folder.glob("*.json")) for folder in (RESULTS / profile).iterdir()}
    assert found == planned


def test_load_profile_keeps_every_run_with_its_reason():
    frames = load("smoke")
    planned = grid.planned_run_ids("smoke")
    assert {g: n for g, n in frames.runs.groupby("grid").size().items() if g in planned} == {
        g: len(ids) for g, ids in planned.items()}
    not_ok = frames.runs[frames.runs.status != "ok"].set_index("run_id")
    assert not_ok.status.to_dict() == {"run6_r36_t256_temp0.0_d10_adaptive1": "failed",
                                       "scenario_d_creative_writing": "refused"}
    assert "OutOfMemoryError" in not_ok.reason["run6_r36_t256_temp0.0_d10_adaptive1"]
    assert frames.skipped.empty


def test_replicates_become_one_row_per_arm_batch():
    frames = load("smoke")
    doc = json.loads((RESULTS / "smoke" / "adaptive_grid" / f"{W3_ON}.json").read_text())
    rows = frames.arm_batches[frames.arm_batches.run_id == W3_ON]
    assert len(rows) == sum(len(r["batches"]) for r in doc["replicates"])
    assert set(rows.arm) == {"run", "baseline"} and set(rows.instance) == {0}  # smoke: one engine per group
    assert (rows.design == "within-engine").all()
    run = frames.runs.set_index("run_id").loc[W3_ON]
    assert (run.design, run.engine_instances, run.arms) == ("within-engine", 1, ["run", "baseline"])
    assert run.warmup == "1 stable"
    aa = frames.runs.set_index("run_id").loc["aa_run3_r36_t128_temp0.0_d10_engines"]
    assert (aa.design, aa.engine_instances) == ("engines-interleaved", 2)
    assert len(frames.arm_batches[frames.arm_batches.run_id == aa.name].instance.unique()) == 4  # 2 per arm


def test_an_older_result_without_replicates_is_one_instance_of_arm_run(tmp_path):
    def strip(doc):  # as schema version 1 wrote it, before design and replicates
        del doc["replicates"], doc["design"]
        doc["schema_version"] = 1
    frames = load("smoke", write_variant(tmp_path, strip))
    run = frames.runs.set_index("run_id").loc[W3_ON]
    assert run.design == analysis.LEGACY and run.engine_instances == 1 and run.arms == ["run"]
    rows = frames.arm_batches[frames.arm_batches.run_id == W3_ON]
    assert set(rows.instance) == {0} and set(rows.arm) == {"run"} and len(rows) == run.n_batches


def test_loader_reads_the_seed_jq_paths():
    path = RESULTS / "full" / "early_exit_grid" / "run3_r36_t128_temp0.0_thresh0.5.json"
    doc = json.loads(path.read_text())
    run = load("full").runs.set_index("run_id").loc[path.stem]
    assert run.latency_avg_s == doc["summary"]["per_mode"][0]["latency_avg_s"]
    assert run.dram_bytes_write == doc["summary"]["per_mode"][0]["ncu_metrics"]["dram__bytes_write.sum"]
    assert run.workload_number == doc["workload"]["number"]


def test_expected_runs_without_a_file_are_missing_rows():
    frames = analysis.load_profile(RESULTS, "smoke", expected={"adaptive_grid": ["run9_r4_t64_temp0.0_d5_adaptive0"]})
    row = frames.runs.set_index("run_id").loc["run9_r4_t64_temp0.0_d5_adaptive0"]
    assert row.status == "missing" and "no " in row.reason and row.workload_number == 9


@pytest.mark.parametrize("change, message", [
    ("{ not json", "cannot read result"),
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d.update(run_id="other"), "must match the file name"),
    (lambda d: d.update(results=[]), "needs results"),
    (lambda d: d["replicates"][0]["batches"][0].pop("arm"), "without arm or latency_s"),
    (lambda d: d["workload"].update(number=4), "workload number is 4 in the JSON but 3 in the run id"),
    (lambda d: [r["sampling_params"].update(temperature=0.7) for r in d["results"]], "temperature")])
def test_an_unreadable_result_is_skipped_and_listed(tmp_path, change, message):
    frames = load("smoke", write_variant(tmp_path, change))
    assert list(frames.skipped.path) == [f"smoke/adaptive_grid/{W3_ON}.json"]
    assert message in frames.skipped.reason.iloc[0] and str(tmp_path) not in frames.skipped.reason.iloc[0]
    row = frames.runs.set_index("run_id").loc[W3_ON]
    assert row.status == "unreadable" and message in row.reason and row.workload_number == 3
    assert (frames.runs.status == "ok").sum() == (load("smoke").runs.status == "ok").sum() - 1


def test_read_run_reuses_read_result(tmp_path):
    path = tmp_path / f"{W3_ON}.json"
    path.write_text("[]")
    with pytest.raises(SchemaError, match="not a nwor result"):
        analysis.read_run(path)


def test_empty_profile_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        analysis.load_profile(tmp_path, "smoke")


def test_views_name_their_columns_and_survive_missing_ones():
    frames = load("smoke")
    assert list(views.not_measured(frames).columns) == ["grid", "run_id", "status", "reason"]
    assert len(views.runs(frames)) == len(frames.runs) and "design" in views.runs(frames)
    empty = views.adaptive_latency(frames.runs.iloc[0:0])
    assert empty.empty and "latency_reduction_pct_verdict" in empty.columns


def test_acceptance_per_position_keeps_runs_without_rates():
    per_position = views.acceptance_per_position(load("smoke"), "adaptive_grid")
    failed = per_position[per_position.run_id == "run6_r36_t256_temp0.0_d10_adaptive1"]
    assert len(failed) == 1 and failed.position.isna().all() and "failed" in failed.reason.iloc[0]


def test_fixtures_match_their_generator(tmp_path, monkeypatch):
    for name in ("TARGET_MODEL", "DRAFT_MODEL", "TENSOR_PARALLEL_SIZE"):
        monkeypatch.delenv(name, raising=False)  # the generator expands the grids as parameters/ says
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


def test_report_notebook_shape():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    body = ast.parse(tagged[0].source).body
    assert {t.id for node in body for t in node.targets} == {"profile", "outputs_root", "report_folder"}
    assert all(isinstance(node.value, ast.Constant) for node in body)
    assert all("#" in line for line in tagged[0].source.splitlines())
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert all(len(c.source.splitlines()) <= 10 and "def " not in c.source and "[[" not in c.source for c in code)


STAGES = {"load": ("analysis.load", "grid."), "compare": ("arms.", "compare.", "pairing.", "determinism."),
          "findings": ("findings.",), "plots": ("plots", "save_figure")}


def test_report_notebook_runs_one_way_and_leads_with_the_aa_calibration():
    sources = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    cells = {stage: [i for i, s in enumerate(sources) if any(m in s for m in modules) and "import" not in s]
             for stage, modules in STAGES.items()}
    order = list(STAGES)
    for before, after in zip(order, order[1:]):  # every cell of a stage comes before the next stage's first
        assert max(cells[before]) < min(cells[after]), (before, after)
    effects = next(i for i, s in enumerate(sources) if "compare_adaptive" in s)
    assert next(i for i, s in enumerate(sources) if "calibration_summary" in s) < effects  # A/A before any effect
