"""scripts/tiny_acceptance.py on the real CPU engine with the smoke pair: one JSON line with k positions, and a
noiseless head accepts more than a noisy one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "tiny_acceptance.py"


def _run(*args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout.strip().splitlines(), done.stderr


@pytest.mark.engine
def test_acceptance_per_position_falls_with_noise():
    results = {}
    for noise in ("0.0", "0.3"):
        rc, out, err = _run("--recipe", "cpu", "--draft-noise", noise, "--k", "3", "--requests", "4", "--tokens", "16")
        assert rc == 0, err[-2000:]
        results[noise] = json.loads(out[-1])
        assert len(results[noise]["acceptance_rate_per_pos"]) == 3
    assert results["0.0"]["mean_acceptance_length"] > results["0.3"]["mean_acceptance_length"]


def test_unknown_recipe_is_one_line_and_exit_2():
    rc, out, err = _run("--recipe", "nope")
    assert rc == 2 and not out and err.strip().count("\n") == 0 and "unknown recipe 'nope'" in err
