"""scripts/gpu_queue.sh on real files: each command runs, and the machine label reaches it only when one is given."""
from __future__ import annotations

import os
import shutil
import subprocess
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
