"""scripts/gpu_queue.sh on real files: each command runs, and the machine label reaches it only when one is given."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_queue.sh"


@pytest.fixture
def queue(tmp_path):
    gpu = f"test{os.getpid()}"  # the script's per-queue temp folder is /tmp/nwor-q<GPU>-tmp: removed afterwards
    seen = tmp_path / "seen.txt"
    commands = tmp_path / "queue.txt"
    commands.write_text(f'echo "label=${{NWOR_MACHINE_LABEL-unset}} gpu=$CUDA_VISIBLE_DEVICES" > {seen}\n')
    yield gpu, commands, tmp_path / "logs", seen
    shutil.rmtree(f"/tmp/nwor-q{gpu}-tmp", ignore_errors=True)


@pytest.mark.parametrize("argument, caller, expected", [
    (["h100-session7"], None, "h100-session7"),  # given: exported to every command
    ([], "from-caller", "from-caller"),           # not given: the caller's passes through
    ([], None, "unset"),                          # neither: none is invented
])
def test_machine_label_only_when_set(queue, argument, caller, expected):
    gpu, commands, logs, seen = queue
    env = {k: v for k, v in os.environ.items() if k != "NWOR_MACHINE_LABEL"}
    if caller is not None:
        env["NWOR_MACHINE_LABEL"] = caller
    subprocess.run(["bash", str(SCRIPT), gpu, str(commands), str(logs), *argument], env=env, check=True, timeout=60)
    assert seen.read_text() == f"label={expected} gpu={gpu}\n"
    log = (logs / f"q{gpu}.log").read_text()
    assert "EXIT 0 echo" in log and log.rstrip().endswith("QUEUE DONE")


def test_the_queue_file_is_read_again_before_each_command(queue):
    """Removing the lines not yet started stops them, and an appended line runs. In session 7 two removed lines
    still ran: the edited file was a new file under the old name, and bash kept reading the old one."""
    gpu, commands, logs, _ = queue
    out, release = commands.parent / "out.txt", commands.parent / "release"
    first = f"while [ ! -e {release} ]; do sleep 0.05; done; echo one >> {out}"
    commands.write_text(f"{first}\n\necho two >> {out}\necho three >> {out}\n")
    proc = subprocess.Popen(["bash", str(SCRIPT), gpu, str(commands), str(logs)])
    log = logs / f"q{gpu}.log"
    deadline = time.monotonic() + 30
    while not (log.exists() and "START while" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    # A new file renamed over the old one, as editors and the device tool's copy of the work tree write it
    edited = commands.with_suffix(".new")
    edited.write_text(f"{first}\necho four >> {out}\n")
    os.replace(edited, commands)
    release.touch()
    assert proc.wait(timeout=30) == 0
    assert out.read_text() == "one\nfour\n"
    assert log.read_text().count("START") == 2 and log.read_text().rstrip().endswith("QUEUE DONE")


def test_a_gpu_set_names_its_files_without_the_comma(tmp_path):
    """A tensor-parallel queue gets both GPUs; its log is q<a>-<b>.log, a name the device tool brings back."""
    gpu = f"{os.getpid()},9"
    seen, commands = tmp_path / "seen.txt", tmp_path / "queue.txt"
    commands.write_text(f'echo "gpu=$CUDA_VISIBLE_DEVICES tmp=$TMPDIR" > {seen}\n')
    try:
        subprocess.run(["bash", str(SCRIPT), gpu, str(commands), str(tmp_path / "logs")], check=True, timeout=60)
    finally:
        shutil.rmtree(f"/tmp/nwor-q{os.getpid()}-9-tmp", ignore_errors=True)
    assert seen.read_text() == f"gpu={gpu} tmp=/tmp/nwor-q{os.getpid()}-9-tmp\n"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"q{os.getpid()}-9.log", f"q{os.getpid()}-9.out"]
