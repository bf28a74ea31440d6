"""nwor's plugin (this environment's stock vLLM) against the fork's own engine: same tiny models, prompts, T = 0.

Runs scripts/fork_parity.py (one engine per side and variant, ~10 engine starts) and checks the parity
issue's targets: outputs identical in every variant; draft-length histograms within 5 % of steps; early
exit at 0.3 / 0.5 / 0.7 with stop % within 2 points and acceptance within 0.02. Markers `fork` and `engine`.
The measured table and the reasons for what differs are in docs/plugin.md ("Parity with the fork").
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fork_python

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parity")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fork_parity.py"), "--fork-python", fork_python(),
                           "--out", str(out)], capture_output=True, text=True, timeout=3000, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "parity.json").read_text())
    return {row["variant"]: row for row in doc["rows"]}


@pytest.mark.fork
@pytest.mark.engine
def test_both_sides_ran_what_they_claim(parity):
    for variant, row in parity.items():
        assert row["fork"]["vllm_version"].startswith("0.11.1"), variant
        assert "VLLM_SPEC_CONFIDENCE_THRESHOLD" in row["fork"]["switches"], variant
        assert "NWOR_PLUGIN_CONFIG" in row["plugin"]["switches"] or variant == "off", variant
        assert row["fork"]["steps"] > 0 and row["plugin"]["steps"] > 0, variant


@pytest.mark.fork
@pytest.mark.engine
def test_outputs_identical_in_every_variant(parity):
    assert {v: r["outputs_identical"] for v, r in parity.items()} == {v: True for v in parity}


@pytest.mark.fork
@pytest.mark.engine
def test_draft_length_histograms_within_5_pct_of_steps(parity):
    gaps = {v: round(r["histogram_gap_pct"], 2) for v, r in parity.items() if v in ("off", "adaptive")}
    assert all(g <= 5.0 for g in gaps.values()), gaps


@pytest.mark.fork
@pytest.mark.engine
@pytest.mark.parametrize("threshold", ["0.3", "0.5", "0.7"])
def test_early_exit_stop_pct_and_acceptance_match(parity, threshold):
    row = parity[threshold]
    assert row["stop_pct_gap"] <= 2.0, (row["fork"]["stop_pct"], row["plugin"]["stop_pct"])
    assert row["acceptance_gap"] <= 0.02, (row["fork"]["acceptance"], row["plugin"]["acceptance"])
