"""nwor on the fork, end to end: the run notebook through papermill in a kernel of the fork environment.

`nwor run` is started with the fork environment's python, so papermill's `python3` kernel is that
environment's (its own kernelspec, or ipykernel's native one). Works for the PR branch and the older
`elastic-speculation*` branches alike. Markers `fork` and `engine`.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from conftest import fork_python

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "run3_r36_t128_temp0.0_thresh0.5"


def _fork_env(tmp_path: Path) -> dict:
    spec = importlib.util.spec_from_file_location("fork_parity", ROOT / "scripts" / "fork_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fork_env(fork_python(), str(tmp_path / "models"))


@pytest.mark.fork
@pytest.mark.engine
def test_run_notebook_on_the_fork_is_native_with_switches_and_fork_commit(tmp_path):
    out = tmp_path / "outputs"
    done = subprocess.run([fork_python(), "-m", "nwor.cli", "run", "early_exit_grid", "--profile", "smoke",
                           "--only", RUN_ID, "--feature-impl", "native", "--outputs", str(out)],
                          env=_fork_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=900)
    result_path = out / "smoke" / "early_exit_grid" / f"{RUN_ID}.json"
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(result_path.read_text())
    notebook = json.loads(result_path.with_suffix(".ipynb").read_text())
    assert doc["status"] == "ok"
    features = doc["features"]
    # The PR branch reads VLLM_SPEC_*; the older branches VLLM_NWOR_* (adaptive on unless set to 0).
    prefix = {"nwor-fork-spec": "VLLM_SPEC", "nwor-fork": "VLLM_NWOR"}[features["capability"]["flavour"]]
    assert features["impl"] == {"adaptive_draft_length": "off", "confidence_early_exit": "native"}
    assert features["feature_impl"] == "native"
    assert features["switches"][f"{prefix}_ADAPTIVE_DRAFT_LENGTH"] == "0"
    assert features["switches"][f"{prefix}_CONFIDENCE_THRESHOLD"] == "0.5"
    assert features["effective"]["draft_length_options"] is None  # adaptive really off, though the default is on
    assert features["effective"]["confidence_threshold"] == 0.5  # read back from the engine's SpeculativeConfig
    assert features["effective"]["source"] == "engine"
    # `env` is collected inside the kernel: vLLM 0.11.1 there means the kernel was the fork environment's python.
    env = doc["env"]
    assert env["vllm_version"] == "0.11.1"
    assert env["vllm_source"]["commit"], "fork commit missing: the environment's vllm dist-info has no fork_build.json"
    assert doc["metrics"]["num_drafts"] > 0
    assert notebook["metadata"]["papermill"]["exception"] is None
