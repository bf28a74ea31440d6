"""Tests for nwor.config: RunSpec validation (each rule names its field), mappings, hashing, env overrides,
and that every exception in nwor.errors survives pickling (runs cross process boundaries)."""
from __future__ import annotations

import dataclasses
import inspect
import pickle
import re

import pytest

from nwor import errors
from nwor.config import SPEC_FIELDS, RunSpec, hash_params, spec_from_mapping
from nwor.env_overrides import apply_env_overrides
from nwor.errors import ConfigError


def test_defaults_are_valid():
    spec = RunSpec()
    assert spec.method == "eagle" and spec.speculative
    assert isinstance(spec.ncu_metrics, tuple)
    assert spec.to_dict()["ncu_metrics"] == list(spec.ncu_metrics)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_requests", 0),
        ("num_speculative_tokens", 0),
        ("confidence_threshold", -0.1),
        ("confidence_threshold", 1.5),
        ("temperature", -1),
        ("top_p", 0),
        ("top_p", 1.5),
        ("method", "bogus"),
        ("feature_impl", "x"),
        ("ncu_mode", "sometimes"),
        ("ncu_replay_mode", "range"),
        ("tiny_models", "huge"),
        ("adaptive_draft_length", 1),
        ("ncu", 0),
        ("enforce_eager", 1),
        ("ignore_eos", 0),
        ("num_requests", True),  # a bool is not an integer here
        ("max_new_tokens", 2.5),
    ],
)
def test_invalid_value_names_its_field(field, value):
    with pytest.raises(ConfigError) as info:
        RunSpec(**{field: value})
    assert f"invalid {field}=" in str(info.value)
    assert info.value.context["field"] == field


def test_method_none_cannot_be_adaptive():
    with pytest.raises(ConfigError, match=r"invalid method='none'") as info:
        RunSpec(method="none", draft_model=None, adaptive_draft_length=True)
    assert info.value.context["field"] == "method"
    RunSpec(method="none", draft_model=None)  # plain "none" is fine


def test_early_exit_needs_eagle():
    with pytest.raises(ConfigError, match=r"invalid confidence_threshold=0\.5.*EAGLE"):
        RunSpec(method="ngram", confidence_threshold=0.5)
    RunSpec(method="ngram", confidence_threshold=0.0)


@pytest.mark.parametrize("field", ["target_model", "draft_model"])
def test_missing_local_model_folder(field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"invalid {field}='\./nope'.*no such local model folder"):
        RunSpec(**{field: "./nope"})
    (tmp_path / "nope").mkdir()
    with pytest.raises(ConfigError, match=rf"invalid {field}='\./nope'.*not a model folder \(no config.json"):
        RunSpec(**{field: "./nope"})  # an empty folder is not a model
    (tmp_path / "nope" / "config.json").write_text("{}")
    assert getattr(RunSpec(**{field: "./nope"}), field) == "./nope"


@pytest.mark.parametrize(("values", "needle"), [
    ({"temperature": float("inf")}, "invalid temperature=inf"),
    ({"ncu_timeout_s": float("inf")}, "invalid ncu_timeout_s=inf"),
    ({"ncu_metrics": "dram__bytes_read.sum"}, "not one string"),
    ({"dtype": "fp8_e9"}, "invalid dtype='fp8_e9': must be one of auto, half"),
    ({"attention_backend": ""}, "invalid attention_backend=''"),
])
def test_values_that_would_break_later_are_refused(values, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        RunSpec(**values)


def test_hf_ids_are_not_checked_as_paths():
    assert RunSpec(target_model="meta-llama/Llama-3.1-8B-Instruct").target_model.startswith("meta-llama")


def test_spec_from_mapping_ignores_unrelated_globals():
    spec = spec_from_mapping({"num_requests": 3, "result_path": "x.json", "log_path": "x.log", "In": [],
                              "__name__": "__main__", "np": object()})
    assert spec.num_requests == 3
    assert spec == RunSpec(num_requests=3)


def test_spec_from_mapping_wraps_invalid_values():
    with pytest.raises(ConfigError, match="invalid top_p"):
        spec_from_mapping({"top_p": 2.0})


def test_lists_become_tuples():
    spec = RunSpec(ncu_metrics=["a.sum", "b.sum"], draft_length_options=[2, 4])
    assert spec.ncu_metrics == ("a.sum", "b.sum")
    assert spec.draft_length_options == (2, 4)
    hash(spec)  # frozen and hashable only with tuples
    assert spec == RunSpec(ncu_metrics=("a.sum", "b.sum"), draft_length_options=(2, 4))


def test_params_hash_stable_for_equal_specs():
    a = RunSpec(num_requests=5, ncu_metrics=["x.sum"])
    b = RunSpec(num_requests=5, ncu_metrics=("x.sum",))
    assert a.params_hash() == b.params_hash()
    assert len(a.params_hash()) == 16


# A valid alternative value for every field, so each one can be shown to change the hash.
_CHANGED = {
    "run_id": "other", "grid": "g", "profile": "p", "workload_number": 7, "workload_name": "w",
    "target_model": "org/model", "draft_model": "org/draft", "method": "ngram", "num_speculative_tokens": 5,
    "num_requests": 9, "measured_batches": 3, "warmup_batches": 0, "temperature": 0.7, "top_p": 0.95,
    "max_new_tokens": 33, "ignore_eos": False, "max_model_len": 1024, "tensor_parallel_size": 2,
    "dtype": "float32", "gpu_memory_utilization": 0.3, "enforce_eager": True, "engine_in_process": True,
    "attention_backend": "FLASH_ATTN",
    "prompt_set": "builtin:code", "prompt_shuffle_seed": 1, "prompt_min_chars": 2, "prompt_max_chars": 700,
    "adaptive_draft_length": True, "draft_length_options": (2, 4), "confidence_threshold": 0.5,
    "num_speculative_tokens_per_batch_size": "tuned",
    "feature_impl": "plugin", "ncu": True, "ncu_metrics": ("a.sum",),
    "ncu_replay_mode": "kernel", "ncu_timeout_s": 10.0, "seed": 1, "tiny_models": "gpu",
    "warmup_max_batches": 9, "warmup_window": 4, "warmup_tolerance": 0.05, "engine_instances": 3,
    "arms": ({"name": "baseline", "adaptive_draft_length": True},), "arm_design": "engines",
    "serve_max_concurrency": 8, "serve_request_rate": 2.0, "serve_requests_per_slot": 3, "serve_slo_ttft_ms": 500.0,
    "serve_slo_tpot_ms": 50.0, "serve_instances": 2,
    "ewma_alpha": 0.2, "prompt_shift": ({"prompt_set": "builtin:creative"},), "synthetic_acceptance_rate": 0.5,
}


# Fields with one allowed value cannot change (ncu_mode: only "after" is implemented).
_SINGLE_VALUED = {"ncu_mode"}


def test_change_table_covers_every_field():
    assert set(_CHANGED) | _SINGLE_VALUED == set(SPEC_FIELDS)


def test_ncu_mode_instead_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="profiling instead is not implemented"):
        RunSpec(ncu_mode="instead")


@pytest.mark.parametrize("field", sorted(_CHANGED))
def test_params_hash_changes_with_any_field(field):
    # ncu settings shape only profiled runs: compare them with ncu on.
    base = RunSpec(ncu=True) if field.startswith("ncu_") else RunSpec()
    if field.startswith("serve_"):  # serving settings shape only serving runs
        base = RunSpec(serve_max_concurrency=4)
    changed = {field: _CHANGED[field]}
    other = dataclasses.replace(base, **changed)
    assert getattr(other, field) != getattr(base, field)
    assert other.params_hash() != base.params_hash()


@pytest.mark.parametrize("field", sorted(f for f in _CHANGED if f.startswith("ncu_")))
def test_params_hash_ignores_ncu_settings_of_a_run_without_ncu(field):
    base = RunSpec()
    assert dataclasses.replace(base, **{field: _CHANGED[field]}).params_hash() == base.params_hash()


def test_params_hash_of_a_stored_spec_matches_the_live_one():
    spec = RunSpec(num_requests=3, ncu=True)
    assert hash_params(spec.to_dict()) == spec.params_hash()


def test_env_overrides_apply():
    out = apply_env_overrides({"target_model": "tiny", "num_requests": 3},
                              {"TARGET_MODEL": "org/t", "DRAFT_MODEL": "org/d", "TENSOR_PARALLEL_SIZE": "4"})
    assert out == {"target_model": "org/t", "draft_model": "org/d", "tensor_parallel_size": 4, "num_requests": 3}


def test_env_overrides_ignore_unset_and_empty():
    values = {"target_model": "tiny"}
    assert apply_env_overrides(values, {"TARGET_MODEL": ""}) == values
    assert apply_env_overrides(values, {}) == values


def test_env_override_bad_int():
    with pytest.raises(ConfigError, match="TENSOR_PARALLEL_SIZE='two'") as info:
        apply_env_overrides({}, {"TENSOR_PARALLEL_SIZE": "two"})
    assert info.value.context["field"] == "tensor_parallel_size"


def test_env_overrides_default_to_os_environ(monkeypatch):
    monkeypatch.setenv("DRAFT_MODEL", "org/from-env")
    monkeypatch.delenv("TARGET_MODEL", raising=False)
    monkeypatch.delenv("TENSOR_PARALLEL_SIZE", raising=False)
    assert apply_env_overrides({}) == {"draft_model": "org/from-env"}


_ERROR_CLASSES = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                  if issubclass(cls, Exception) and cls.__module__ == errors.__name__]


def test_error_classes_found():
    names = {c.__name__ for c in _ERROR_CLASSES}
    assert {"NworError", "ConfigError", "FeatureUnavailable", "RunFailed", "ProfilerError", "NcuNotAvailable",
            "SchemaError", "LockHeld"} <= names


@pytest.mark.parametrize("cls", _ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_round_trip(cls):
    err = cls("something went wrong", field="num_requests", value=0, path="/x/y.json")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "something went wrong"
    assert back.message == err.message
    assert back.context == {"field": "num_requests", "value": 0, "path": "/x/y.json"}


def test_config_error_from_validation_pickles():
    with pytest.raises(ConfigError) as info:
        RunSpec(top_p=0)
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value) and back.context == {"field": "top_p", "value": 0}


def test_spec_with_arms_is_hashable_and_round_trips():
    spec = RunSpec(adaptive_draft_length=True, arms=[{"name": "baseline", "adaptive_draft_length": False}])
    assert len({spec, RunSpec(**spec.to_dict())}) == 1
    assert spec.to_dict()["arms"] == [{"name": "baseline", "adaptive_draft_length": False}]
    assert RunSpec(**spec.to_dict()) == spec


def test_engine_in_process_only_where_it_can_be():
    # Tensor-parallel workers need an engine process: a profile's preference must not be recorded as applied.
    assert RunSpec(engine_in_process=True, tensor_parallel_size=2).engine_in_process is False
    assert RunSpec(engine_in_process=True).engine_in_process is True


def test_serving_runs_record_their_separate_engine_process():
    # `vllm serve` has no in-process engine core: a profile's setting must not be recorded as applied.
    assert RunSpec(engine_in_process=True, serve_max_concurrency=2).engine_in_process is False
