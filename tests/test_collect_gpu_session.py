"""Tests for scripts/collect_gpu_session.py and nwor/collect.py on real files: queue folders built from the smoke
result fixtures, merged into DEST; conflicts and bad input leave DEST as it was."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

import nwor.collect
from nwor.collect import INCOMPLETE_MARK, merge_logs, redactor

SCRIPT = Path(__file__).parent.parent / "scripts" / "collect_gpu_session.py"
spec = importlib.util.spec_from_file_location("collect_gpu_session", SCRIPT)
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)

SMOKE = Path(__file__).parent / "fixtures" / "results" / "smoke"
GPU_ROOT = "/srv/gpu/nwor"  # the repository root on the (pretend) GPU machine
RUN1 = "run1_r12_t64_temp0.0_d10_adaptive0"
EE2 = "run2_r36_t128_temp0.0_thresh0.3"


def _result(src: Path, dest: Path, queue: str) -> None:
    """A real result JSON with machine paths in it, as a GPU run leaves them."""
    doc = json.loads(src.read_text())
    doc["machine_paths"] = [f"/tmp/nwor-{queue}/tmp/x.json", "/root/.cache/nwor/models/tiny/target",
                            "/opt/torch/.venv/lib/python3.12/site-packages/vllm",
                            f"{GPU_ROOT}/outputs/h100s9/j{queue[-1]}/gpu-smoke/{dest.stem}.ncu-rep",
                            f"log line\n/tmp/nwor-{queue}/vllm/cache"]
    doc["env"] = {**doc["env"], "machine_id": "3f2a9c01d4e5", "machine_label": "h100-session9"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc, indent=1))


@pytest.fixture
def queues(tmp_path):
    """Three queue folders as extracted from a session archive: <x>/outputs/h100s9/j0 ... j2."""
    base = tmp_path / "extracted" / "outputs" / "h100s9"
    j0, j1, j2 = (base / f"j{i}" for i in range(3))
    _result(SMOKE / "adaptive_grid" / f"{RUN1}.json", j0 / "gpu-smoke" / "adaptive_grid" / f"{RUN1}.json", "q0")
    (j0 / "gpu-smoke" / "adaptive_grid" / f"{RUN1}.ncu-rep").write_bytes(b"\x00NCU" * 100)
    (j0 / "gpu-smoke" / "adaptive_grid" / f"{RUN1}.ncu-summary.txt").write_text(
        f"report {GPU_ROOT}/outputs/h100s9/j0/gpu-smoke/adaptive_grid/{RUN1}.ncu-rep\n")
    (j0 / "gpu-smoke" / "master_experiment.log").write_text(
        f"[2026-11-27 17:00:01] START    adaptive_grid/{RUN1}\n[2026-11-27 17:05:00] COMPLETE adaptive_grid/{RUN1}\n")
    (j0 / "gpu-smoke" / "adaptive_grid" / "experiment.log").write_text(
        f"[2026-11-27 17:00:01] START    adaptive_grid/{RUN1}\n")
    _result(SMOKE / "early_exit_grid" / f"{EE2}.json", j1 / "gpu-smoke" / "early_exit_grid" / f"{EE2}.json", "q1")
    (j1 / "gpu-smoke" / "early_exit_grid" / f"{EE2}.vllm.log").write_text(
        f"INFO cwd {GPU_ROOT}\nINFO cache /tmp/nwor-q1/tmp/tmpu4.json\nshards 0%\rshards 100%\r\n")  # tqdm's \r
    (j1 / "gpu-smoke" / "master_experiment.log").write_text(
        f"[2026-11-27 17:02:00] START    early_exit_grid/{EE2}\nTraceback 0%\r100%\n"
        f"[2026-11-27 17:05:00] FAILED   early_exit_grid/{EE2}\n")
    (j1 / "gpu-smoke" / ".nwor.lock").write_text("{}")  # a stale lock: left out
    shutil.copy(SMOKE / "early_exit_grid" / f"{EE2}.json", j1 / "gpu-smoke" / "same.json")
    (j2 / "gpu-smoke").mkdir(parents=True)
    shutil.copy(j1 / "gpu-smoke" / "same.json", j2 / "gpu-smoke" / "same.json")  # an identical copy: fine
    # j2 also holds a run made by scripts/run_reduced.py: no log lines
    _result(SMOKE / "early_exit_grid" / f"{EE2}.json",
            j2 / "gpu-smoke-1x" / "controller_grid" / "ctl_synthetic_a0.2_r36_t128_d10.json", "q2")
    return [j0, j1, j2]


def _run(*args, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_merges_layout_logs_and_redacts(tmp_path, queues, capsys):
    dest = tmp_path / "artifacts" / "session9"
    rc, out, err = _run(dest, *queues, capsys=capsys)
    assert rc == 0, err
    assert set(_tree(dest)) == {
        f"gpu-smoke/adaptive_grid/{RUN1}.json", f"gpu-smoke/adaptive_grid/{RUN1}.ncu-summary.txt",
        "gpu-smoke/adaptive_grid/experiment.log", "gpu-smoke/master_experiment.log", "gpu-smoke/same.json",
        f"gpu-smoke/early_exit_grid/{EE2}.json", f"gpu-smoke/early_exit_grid/{EE2}.vllm.log",
        "gpu-smoke-1x/controller_grid/ctl_synthetic_a0.2_r36_t128_d10.json"}  # no .ncu-rep, no .nwor.lock
    assert (dest / "gpu-smoke" / "master_experiment.log").read_bytes().decode().split("\n")[:-1] == [
        f"[2026-11-27 17:00:01] START    adaptive_grid/{RUN1}", f"[2026-11-27 17:02:00] START    early_exit_grid/{EE2}",
        "Traceback 0%\r100%", f"[2026-11-27 17:05:00] COMPLETE adaptive_grid/{RUN1}",
        f"[2026-11-27 17:05:00] FAILED   early_exit_grid/{EE2}"]  # equal stamps keep the queues' order
    doc = json.loads((dest / "gpu-smoke" / "adaptive_grid" / f"{RUN1}.json").read_text())  # still valid JSON
    assert doc["machine_paths"] == [
        "<machine-tmp>/nwor-q0/tmp/x.json", "~/.cache/nwor/models/tiny/target",
        "<image-venv>/lib/python3.12/site-packages/vllm",
        f"outputs/h100s9/j0/gpu-smoke/{RUN1}.ncu-rep", "log line\n<machine-tmp>/nwor-q0/vllm/cache"]
    assert doc["run_id"] == json.loads((SMOKE / "adaptive_grid" / f"{RUN1}.json").read_text())["run_id"]
    # The machine identity survives the redaction: the report keeps this session's runs apart from others'.
    assert (doc["env"]["machine_id"], doc["env"]["machine_label"]) == ("3f2a9c01d4e5", "h100-session9")
    assert (dest / "gpu-smoke" / "early_exit_grid" / f"{EE2}.vllm.log").read_bytes() == (
        b"INFO cwd .\nINFO cache <machine-tmp>/nwor-q1/tmp/tmpu4.json\nshards 0%\rshards 100%\r\n")
    assert f"repository root on the GPU machine: {GPU_ROOT} (read from" in out
    assert "ncu reports dropped (*.ncu-rep): 1" in out and "dot files left out: 1" in out
    assert f"{queues[0]}: 2 files merged" in out and f"{queues[2]}: 1 files merged" in out
    assert "runs (result JSON) in gpu-smoke/early_exit_grid: 1" in out
    assert "runs (result JSON) in gpu-smoke-1x/controller_grid: 1" in out
    assert "identical copies skipped: 1" in out and err == ""
    assert os.listdir(dest.parent) == ["session9"]  # the staging folder is gone
    assert dest.stat().st_mode & 0o055 == 0o055  # readable by all, as the folders nwor writes


def test_conflict_between_queues_writes_nothing(tmp_path, queues, capsys):
    (queues[2] / "gpu-smoke" / "same.json").write_text("{}")
    dest = tmp_path / "artifacts" / "session9"
    rc, out, err = _run(dest, *queues, capsys=capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert "gpu-smoke/same.json differs between" in err and str(queues[1]) in err and str(queues[2]) in err
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_existing_dest_merged_into_and_rerun_changes_nothing(tmp_path, queues, capsys):
    dest = tmp_path / "session9"
    assert _run(dest, queues[0], capsys=capsys)[0] == 0
    rc, out, _ = _run(dest, queues[1], queues[2], capsys=capsys)
    assert rc == 0 and "merged into the existing folder" in out
    first = _tree(dest)
    assert first["gpu-smoke/master_experiment.log"].decode().count("START") == 2
    rc, out, _ = _run(dest, *queues, capsys=capsys)  # the whole session again: all identical
    assert rc == 0 and "logs merged: 0" in out and _tree(dest) == first
    assert sorted(os.listdir(tmp_path)) == ["extracted", "session9"] and INCOMPLETE_MARK not in os.listdir(dest)


def test_conflict_with_dest_leaves_it_untouched(tmp_path, queues, capsys):
    dest = tmp_path / "session9"
    assert _run(dest, queues[0], capsys=capsys)[0] == 0
    (queues[1] / "gpu-smoke" / "adaptive_grid").mkdir()
    (queues[1] / "gpu-smoke" / "adaptive_grid" / f"{RUN1}.json").write_text("{}")
    before = _tree(dest)
    rc, _, err = _run(dest, queues[1], capsys=capsys)
    assert rc == 2 and f"{RUN1}.json differs between {queues[1]} and {dest} (already there)" in err
    assert _tree(dest) == before and sorted(os.listdir(tmp_path)) == ["extracted", "session9"]


def test_interrupted_merge_is_marked_then_finished_by_the_same_command(tmp_path, queues, capsys, monkeypatch):
    dest = tmp_path / "session9"
    assert _run(dest, queues[0], capsys=capsys)[0] == 0
    real_replace, moves = os.replace, []

    def replace_then_die(src, dst):
        if len(moves) == 2:  # the marker and one file are in
            raise KeyboardInterrupt  # as if Ctrl-C came between two renames, outside the deferral
        moves.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(nwor.collect.os, "replace", replace_then_die)
    rc, _, err = _run(dest, queues[1], capsys=capsys)
    assert rc == 130 and "half-merged" in err and (dest / INCOMPLETE_MARK).exists()
    monkeypatch.setattr(nwor.collect.os, "replace", real_replace)
    rc, _, err = _run(dest, queues[2], capsys=capsys)  # another command: refused
    assert rc == 2 and "interrupted collect" in err
    assert _run(dest, queues[1], capsys=capsys)[0] == 0 and not (dest / INCOMPLETE_MARK).exists()
    assert (dest / "gpu-smoke" / "master_experiment.log").read_text().count("START") == 2


def test_ctrl_c_while_moving_waits_for_the_last_file(tmp_path, queues, capsys, monkeypatch):
    dest = tmp_path / "session9"
    assert _run(dest, queues[0], capsys=capsys)[0] == 0
    real_replace = os.replace

    def replace_after_ctrl_c(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(nwor.collect.os, "replace", replace_after_ctrl_c)
    rc, _, _ = _run(dest, queues[1], capsys=capsys)
    assert rc == 130 and not (dest / INCOMPLETE_MARK).exists()
    assert (dest / "gpu-smoke" / "early_exit_grid" / f"{EE2}.vllm.log").exists()


def test_leftover_paths_warn_and_strict_exits_1(tmp_path, queues, capsys):
    (queues[0] / "gpu-smoke" / "notes.md").write_text("ok\nbuilt in /home/lead/nwor and /work/x/y\n")
    rc, out, err = _run(tmp_path / "a", queues[0], capsys=capsys)
    assert rc == 0 and f"{tmp_path / 'a' / 'gpu-smoke' / 'notes.md'}:2: /home/lead/nwor" in err
    assert "notes.md:2: /work/x/y" in err and "2 machine paths left" in out
    assert _run(tmp_path / "b", queues[0], "--strict", capsys=capsys)[0] == 1
    assert _run(tmp_path / "c", queues[1], "--strict", capsys=capsys)[0] == 0


def test_explicit_repo_root_where_none_can_be_read(tmp_path, queues, capsys):
    plain = tmp_path / "q"  # not below an `outputs` folder: nothing to read the root from
    shutil.copytree(queues[1], plain)
    rc, out, _ = _run(tmp_path / "a", plain, capsys=capsys)
    assert rc == 0 and "none (none found)" in out
    log = Path("gpu-smoke") / "early_exit_grid" / f"{EE2}.vllm.log"
    assert "INFO cwd /srv/gpu/nwor\n" in (tmp_path / "a" / log).read_text()
    assert _run(tmp_path / "b", plain, "--repo-root", GPU_ROOT + "/", capsys=capsys)[0] == 0
    assert "INFO cwd .\n" in (tmp_path / "b" / log).read_text()


@pytest.mark.parametrize("text, expected", [
    ("/tmp/nwor-q0/tmp/tmpu4.json", "<machine-tmp>/nwor-q0/tmp/tmpu4.json"),
    ('"cache": "/root/.cache/nwor", "py": "/opt/torch/.venv/bin/python"',
     '"cache": "~/.cache/nwor", "py": "<image-venv>/bin/python"'),
    ("/opt/torch/.venv2/x ~/tmp/a a/tmp/b /srv/gpu/nworx/a", "/opt/torch/.venv2/x ~/tmp/a a/tmp/b /srv/gpu/nworx/a"),
    ("file:///tmp/r.html /srv/gpu/nwor/outputs/j0 (/srv/gpu/nwor)", "file://<machine-tmp>/r.html outputs/j0 (.)"),
])
def test_redaction_is_one_pass_on_the_original(text, expected):
    assert redactor(GPU_ROOT)(text) == expected


def test_repo_root_under_tmp_becomes_relative_not_machine_tmp():
    assert redactor("/tmp/repo")("/tmp/repo/outputs/a /tmp/x") == "outputs/a <machine-tmp>/x"


def test_merge_logs_adds_nothing_twice():
    old = "[2026-11-27 17:00:01] START a\n[2026-11-27 17:09:00] COMPLETE a\n"
    assert merge_logs([old, "[2026-11-27 17:05:00] START b"], old) == (
        "[2026-11-27 17:00:01] START a\n[2026-11-27 17:05:00] START b\n[2026-11-27 17:09:00] COMPLETE a\n")


@pytest.mark.parametrize("case, message", [
    ("none", "no queue folders given"), ("missing", "does not exist"), ("inside", "is inside the queue folder"),
    ("holds", "is inside DEST"), ("twice", "given twice"), ("file", "is a file, not a folder"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, queues, capsys, case, message):
    dest = {"inside": queues[0] / "merged", "holds": queues[0].parent, "file": queues[0] / "gpu-smoke" / "same.json"
            }.get(case, tmp_path / "dest")
    given = {"none": [], "missing": [tmp_path / "nope"], "twice": [queues[0], queues[0]]}.get(case, queues[:1])
    if case == "file":
        (queues[0] / "gpu-smoke" / "same.json").write_text("{}")
        given = queues[1:2]
    rc, _, err = _run(dest, *given, capsys=capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "dest").exists() and not (queues[0] / "merged").exists()


def test_two_repo_roots_in_the_queues_strip_neither(tmp_path, queues, capsys):
    (queues[2] / "gpu-smoke" / "moved.txt").write_text("/mnt/other/outputs/h100s9/j0/gpu-smoke\n")
    rc, out, _ = _run(tmp_path / "a", *queues, capsys=capsys)
    assert rc == 0 and f"several found ({GPU_ROOT}, /mnt/other): pass --repo-root" in out
    assert (tmp_path / "a" / "gpu-smoke" / "moved.txt").read_text() == "/mnt/other/outputs/h100s9/j0/gpu-smoke\n"
