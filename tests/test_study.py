"""nwor.study and scripts/assemble_study.py on copies of the committed fixture results: two sessions (machines)
assembled into one study folder that the report's loader and A/A band lookup read per machine."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from nwor import grid
from nwor.analysis import load_profile
from nwor.arms import aa_band, calibration, within_run
from nwor.study import Session, StudyError, assemble

FIXTURES = Path(__file__).parent / "fixtures" / "results"
SCRIPT = Path(__file__).parent.parent / "scripts" / "assemble_study.py"
spec = importlib.util.spec_from_file_location("assemble_study", SCRIPT)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

AA = "aa_run3_r36_t128_temp0.0_d10_within"
RUN = "run3_r36_t128_temp0.0_d10_adaptive1"


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _slower(doc: dict) -> None:
    for rep in doc.get("replicates") or []:
        for batch in rep["batches"]:
            batch["latency_s"] *= 1.5


@pytest.fixture
def sessions(tmp_path):
    """s1: every fixture result, none labelled, plus the A/A run's notebook; s2: later, the A/A run and RUN again,
    RUN 1.5x slower, the A/A run labelled by its own machine."""
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    shutil.copytree(FIXTURES / "full", s1 / "full")
    (s1 / "full" / "calibration_grid" / f"{AA}.ipynb").write_text("{}")
    for grid_name, run_id in (("calibration_grid", AA), ("adaptive_grid", RUN)):
        (s2 / "full" / grid_name).mkdir(parents=True)
        shutil.copy(FIXTURES / "full" / grid_name / f"{run_id}.json", s2 / "full" / grid_name)
    _edit(s2 / "full" / "adaptive_grid" / f"{RUN}.json", _slower)
    _edit(s2 / "full" / "calibration_grid" / f"{AA}.json", lambda d: d["env"].update(machine_label="box-2"))
    return [Session("s1", s1), Session("s2", s2)]


def test_a_later_session_replaces_a_run_and_every_result_names_its_machine(tmp_path, sessions):
    dest = tmp_path / "study"
    manifest = assemble(dest, sessions, ["full"])
    runs = {(r["grid"], r["run_id"]): r for r in manifest["runs"]}
    assert runs[("adaptive_grid", RUN)]["session"] == "s2" and runs[("adaptive_grid", RUN)]["replaced_sessions"] == ["s1"]
    doc = json.loads((dest / "full" / "adaptive_grid" / f"{RUN}.json").read_text())
    fixture = json.loads((FIXTURES / "full" / "adaptive_grid" / f"{RUN}.json").read_text())
    assert doc["replicates"][0]["batches"][0]["latency_s"] == pytest.approx(
        1.5 * fixture["replicates"][0]["batches"][0]["latency_s"])
    assert doc["env"]["machine_label"] == "s2" and doc["assembled"] == {
        "session": "s2", "run_id": RUN, "machine_label_added": True, "replaced_sessions": ["s1"]}
    assert json.loads((dest / "full" / "adaptive_grid" / "run1_r12_t64_temp0.0_d10_adaptive0.json").read_text()
                      )["env"]["machine_label"] == "s1"
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_each_session_keeps_its_calibration_runs_and_its_own_band(tmp_path, sessions):
    dest = tmp_path / "study"
    assemble(dest, sessions, ["full"])
    calib = dest / "full" / "calibration_grid"
    assert (calib / f"{AA}__s1.json").exists() and (calib / f"{AA}__s2.json").exists()
    assert (calib / f"{AA}__s1.ipynb").read_text() == "{}"  # a run's other files follow its new id
    own = json.loads((calib / f"{AA}__s2.json").read_text())
    assert own["run_id"] == f"{AA}__s2" and own["env"]["machine_label"] == "box-2"
    assert own["assembled"]["machine_label_added"] is False  # a label the run recorded is kept
    frames = load_profile(dest, "full", expected=grid.planned_run_ids("full"))
    missing = set(frames.runs[frames.runs.status == "missing"].run_id)
    assert AA not in missing  # the planned A/A run is there, once per session
    aa = calibration(within_run(frames))
    band, note = aa_band(aa, "within-engine", machine="box-2")
    assert band is not None and f"{AA}__s2" in note and f"{AA}__s1" not in note
    band, note = aa_band(aa, "within-engine", machine="s1")
    assert band is not None and f"{AA}__s1" in note and "__s2" not in note


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, sessions, capsys):
    dest = tmp_path / "study"
    assert script.main([str(dest), "--session", "no-equals-sign", "--profile", "full"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert script.main([str(dest), "--session", f"s1={sessions[0].folder}", "--session",
                        f"s1={sessions[1].folder}", "--profile", "full"]) == 2  # labels must differ
    (sessions[1].folder / "full" / "adaptive_grid" / f"{RUN}.json").write_text("{not json")
    with pytest.raises(StudyError, match="not a readable result"):
        assemble(dest, sessions, ["full"])
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    dest.mkdir()
    with pytest.raises(StudyError, match="exists"):
        assemble(dest, sessions[:1], ["full"])
    assert script.main([str(tmp_path / "other"), "--session", f"s1={sessions[0].folder}",
                        "--profile", "gpu-smoke"]) == 2  # no results of that profile
    assert "no results of profile(s) gpu-smoke" in capsys.readouterr().err
