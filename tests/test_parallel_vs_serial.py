"""Tests for scripts/parallel_vs_serial.py on the committed fixture results: a folder against itself agrees
everywhere, a shifted copy is flagged, and the wall time comes from the master log."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "results"
SCRIPT = Path(__file__).parent.parent / "scripts" / "parallel_vs_serial.py"
spec = importlib.util.spec_from_file_location("parallel_vs_serial", SCRIPT)
pvs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pvs)


def _scale_arm(root, arm, scale, grid="*"):
    """Multiply the batch latencies of `arm` (None: every arm) in the grid's result JSONs by `scale`."""
    for path in (root / "full").glob(f"{grid}/*.json"):
        doc = json.loads(path.read_text())
        for rep in doc.get("replicates") or []:
            for batch in rep["batches"]:
                if arm is None or batch["arm"] == arm:
                    batch["latency_s"] *= scale
        path.write_text(json.dumps(doc))


def _copy(tmp_path, name, scale=1.0, log=None):
    root = tmp_path / name
    shutil.copytree(FIXTURES / "full", root / "full")
    if scale != 1.0:
        _scale_arm(root, None, scale, "adaptive_grid")
    if log:
        (root / "full" / "master_experiment.log").write_text(log)
    return root


SERIAL_LOG = ("[2026-11-27 10:00:00] START    adaptive_grid/a\n[2026-11-27 10:05:00] COMPLETE adaptive_grid/a 300.0s\n"
              "[2026-11-27 10:05:00] START    adaptive_grid/b\n[2026-11-27 10:10:00] ERROR    adaptive_grid/b boom\n")
PARALLEL_LOG = ("[2026-11-27 11:00:00] START    adaptive_grid/a ray task (num_cpus=1, num_gpus=1)\n"
                "[2026-11-27 11:00:00] START    adaptive_grid/b ray task (num_cpus=1, num_gpus=1)\n"
                "[2026-11-27 11:02:30] COMPLETE adaptive_grid/b 150.0s\n[2026-11-27 11:02:00] COMPLETE adaptive_grid/a 120.0s\n")


def test_wall_time_spans_first_start_to_last_end(tmp_path):
    assert pvs.wall_s(_copy(tmp_path, "s", log=SERIAL_LOG), "full") == pytest.approx(600.0, abs=1e-9)
    assert pvs.wall_s(_copy(tmp_path, "p", log=PARALLEL_LOG), "full") == pytest.approx(150.0, abs=1e-9)
    assert pvs.wall_s(tmp_path / "none", "full") is None


def test_identical_folders_agree_and_a_shift_is_flagged(tmp_path):
    serial = _copy(tmp_path, "s", log=SERIAL_LOG)
    same = pvs.compare(serial, _copy(tmp_path, "p", log=PARALLEL_LOG), "full", band=(-3.0, 3.0))
    multi = [r for r in same["rows"] if min(r["instances"]) >= 2]
    assert multi, "the fixtures should hold runs with two or more engine instances"
    assert all(r["latency_change_pct"] == pytest.approx(0.0, abs=1e-9) and r["agrees"] for r in multi)
    assert same["wall_ratio"] == pytest.approx(0.25, abs=1e-9)
    slower = pvs.compare(serial, _copy(tmp_path, "slow", scale=1.5), "full", band=(-3.0, 3.0))
    shifted = {r["run_id"]: r for r in slower["rows"]}
    adaptive = {p.stem for p in (FIXTURES / "full" / "adaptive_grid").glob("*.json")}
    moved = [shifted[r["run_id"]] for r in multi if r["run_id"] in adaptive]
    assert moved and all(r["latency_change_pct"] == pytest.approx(50.0, rel=1e-6) and not r["agrees"] for r in moved)


def test_main_exit_codes(tmp_path, capsys):
    serial = _copy(tmp_path, "s", log=SERIAL_LOG)
    parallel = _copy(tmp_path, "p", log=PARALLEL_LOG)
    assert pvs.main([str(serial), str(parallel), "--profile", "full", "--aa-band", "-3", "3",
                     "--max-wall-ratio", "0.2"]) == 1  # 0.25 > 0.2
    assert pvs.main([str(tmp_path / "missing"), str(parallel), "--profile", "full"]) == 2
    assert "error: no result JSONs" in capsys.readouterr().err


def test_runs_judged_together_when_each_has_one_engine(tmp_path, capsys):
    """--pooled: each run is one paired unit, so one-engine runs (batch-only on their own) still get a verdict."""
    serial = _copy(tmp_path, "s", log=SERIAL_LOG)
    same = pvs.compare(serial, _copy(tmp_path, "p", log=PARALLEL_LOG), "full", band=(-3.0, 3.0))["pooled"]
    assert same["runs"] >= 2 and same["latency_change_pct"] == pytest.approx(0.0, abs=1e-9) and same["agrees"]
    slower = pvs.compare(serial, _copy(tmp_path, "slow", scale=1.5), "full", band=(-3.0, 3.0))["pooled"]
    assert slower["latency_change_pct"] > 10 and slower["ci_low"] < slower["latency_change_pct"] < slower["ci_high"]
    parallel = _copy(tmp_path, "p2", log=PARALLEL_LOG)
    assert pvs.main([str(serial), str(parallel), "--profile", "full", "--aa-band", "-3", "3", "--pooled"]) == 0
    assert "runs together: +0.0%" in capsys.readouterr().out
    assert pvs.pooled({"a": [[1.0]]}, {"a": [[1.0]]}, ["a"], None) is None


def _edit_env(path: Path, **values) -> None:
    doc = json.loads(path.read_text())
    doc["env"].setdefault("env_vars", {}).update(values)
    path.write_text(json.dumps(doc))


def test_a_run_environment_that_differs_makes_the_pair_not_comparable(tmp_path, capsys):
    """As in H100 session 7 (Ray set OMP_NUM_THREADS=1 in its workers; serial runs had none): the latencies may
    agree, but a variable other than the executor's own differs, so the script fails and names it."""
    serial = _copy(tmp_path, "s", log=SERIAL_LOG)
    parallel = _copy(tmp_path, "p", log=PARALLEL_LOG)
    # Per run or per engine, not the executor's doing: named ones, and one that differs among the serial runs
    for i, path in enumerate(sorted((serial / "full" / "adaptive_grid").glob("*.json"))):
        _edit_env(path, VLLM_DIST_IDENT=f"vllm_dist_{i}", SOME_RUN_NAME=f"serial-{i}")
    changed = sorted((parallel / "full" / "adaptive_grid").glob("*.json"))[0]
    _edit_env(changed, OMP_NUM_THREADS="1", NWOR_RAY_TASK_ID="abc", CUDA_VISIBLE_DEVICES="3",
              VLLM_DIST_IDENT="vllm_dist_p", SOME_RUN_NAME="parallel")
    doc = json.loads(changed.read_text())
    rows = {r["run_id"]: r for r in pvs.compare(serial, parallel, "full", band=(-3.0, 3.0))["rows"]}
    assert rows[doc["run_id"]]["env_differs"] == {"OMP_NUM_THREADS": [None, "1"]}
    assert not [r for run_id, r in rows.items() if run_id != doc["run_id"] and r["env_differs"]]
    assert pvs.main([str(serial), str(parallel), "--profile", "full", "--aa-band", "-3", "3", "--pooled"]) == 1
    assert f"environment differs: {doc['run_id']}: OMP_NUM_THREADS None (serial) vs '1' (parallel)" in \
        capsys.readouterr().out


def test_effects_agree_for_the_same_runs_and_not_when_one_arm_moves(tmp_path):
    serial = _copy(tmp_path, "s", log=SERIAL_LOG)
    same = pvs.compare(serial, _copy(tmp_path, "p", log=PARALLEL_LOG), "full", band=(-3.0, 3.0))["effects"]
    assert same and same["runs"] >= 2, "the fixtures should hold two or more two-arm runs"
    assert all(row["difference_points"] == pytest.approx(0.0, abs=1e-9) for row in same["rows"]) and same["agrees"]
    # Both arms slower by the same factor: latencies move, what the runs measure does not.
    both = _copy(tmp_path, "both", scale=1.5)
    assert pvs.compare(serial, both, "full", band=(-3.0, 3.0))["effects"]["agrees"]
    # Only arm "run" slower: every run's effect grows by 50 x (run / reference) points, so the results changed.
    one = _copy(tmp_path, "one")
    _scale_arm(one, "run", 1.5)
    moved = pvs.compare(serial, one, "full", band=(-3.0, 3.0))["effects"]
    assert all(row["difference_points"] > 25 for row in moved["rows"]) and not moved["agrees"]
