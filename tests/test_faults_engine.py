"""Faults with the real CPU vLLM engine: killing `nwor run` while the engine is up leaves no process of
it (SIGKILL of its process group; SIGTERM, which stops like Ctrl-C), and an engine that fails to start
is reported with vLLM's root cause and its log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nwor.config import RunSpec
from nwor.errors import RunFailed
from nwor.execute import run_notebook
from nwor.results import read_result

pytestmark = pytest.mark.engine

NWOR = str(Path(sys.executable).with_name("nwor"))
# A run whose engines keep a process of their own on the smoke profile, as every run does on GPU profiles:
# the reaper must take it down. Its balanced order starts a stock engine (no speculation) after plugin-loaded
# ones, which must not share a process (nwor.instances); smoke runs without that run in the kernel's process.
GRID, RUN = "controls_grid", "controls_run3_r36_t128_temp0.0"
GONE_WITHIN_S = 10  # "a few seconds": the watchdog's SIGTERM grace (3 s) plus the resource tracker's (2 s)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _start_until_engine_up(outputs: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Start `nwor run` on one run; return it and its whole process tree once the engine core has run 5 s."""
    proc = subprocess.Popen([NWOR, "run", GRID, "--profile", "smoke", "--outputs", str(outputs),
                             "--only", RUN], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    seen = None
    while time.monotonic() < deadline and proc.poll() is None:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if any("VLLM::EngineCore" in _cmdline(p) for p in tree):
            seen = seen or time.monotonic()
            if time.monotonic() - seen > 5:
                return proc, psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the engine never came up: {proc.communicate(timeout=30)}")


def _survivors(tree: list[psutil.Process]) -> list[str]:
    """Processes of `tree` still running after GONE_WITHIN_S (is_running checks PID reuse; zombies hold nothing)."""
    deadline = time.monotonic() + GONE_WITHIN_S
    while True:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {_cmdline(p)[:80]}" for p in alive]
        time.sleep(0.25)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


def test_sigkill_of_the_process_group_leaves_no_engine(outputs):
    proc, tree = _start_until_engine_up(outputs)
    assert any("VLLM::EngineCore" in _cmdline(p) for p in tree)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _survivors(tree) == []


def test_sigterm_stops_like_ctrl_c_and_leaves_no_engine(outputs):
    proc, tree = _start_until_engine_up(outputs)  # the same outputs: the killed run above is closed first
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted: 1 runs remain; run the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert _survivors(tree) == []
    log = (outputs / "smoke" / "master_experiment.log").read_text().splitlines()
    events = [line.split()[2] for line in log if RUN in line]
    assert events[:3] == ["START", "ABANDONED", "START"], log  # SIGKILL left START; the next run closed it


def test_engine_start_failure_quotes_root_cause_and_names_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A KV cache too small for one sequence of max_model_len: vLLM's engine core fails after loading the model.
    spec = RunSpec(run_id="tiny_kv", num_requests=1, measured_batches=1, warmup_batches=0,
                   gpu_memory_utilization=1e-6)
    with pytest.raises(RunFailed) as info:
        run_notebook(spec, root=tmp_path)
    message = str(info.value)
    print(message)  # shown with -s: the line a user sees
    assert "EngineStartFailed: vLLM engine did not start: " in message
    assert "See root cause above" not in message and "\n" not in message
    assert "(vLLM log: adhoc/adhoc/tiny_kv.vllm.log)" in message
    cause = message.split("did not start: ", 1)[1].split(" (vLLM log:", 1)[0]
    assert cause.split(": ", 1)[1][:40] in (tmp_path / "adhoc" / "adhoc" / "tiny_kv.vllm.log").read_text()
    assert read_result(tmp_path / "adhoc" / "adhoc" / "tiny_kv.json")["status"] == "failed"
    assert not list(tmp_path.rglob("*.logging.json"))  # removed once the engine start ended
