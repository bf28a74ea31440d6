"""Tests for nwor.features with stand-in `vllm.envs` modules and SpeculativeConfig classes (no vLLM import):
flavour detection, explicit on/off switches, the implementation labels, the plugin fallback and refusals."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from nwor.config import RunSpec
from nwor.errors import FeatureUnavailable
from nwor.features import Capability, detect_capability, plan_features


def _envs(*names, as_attributes: bool = False):
    module = types.ModuleType("fake_vllm_envs")
    base = {"VLLM_USE_V1": lambda: True, "VLLM_LOGGING_LEVEL": lambda: "INFO"}
    if as_attributes:
        module.environment_variables = base
        for name in names:
            setattr(module, name, None)
    else:
        module.environment_variables = {**base, **{n: (lambda: None) for n in names}}
    return module


FORK_MAIN = ("VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH", "VLLM_NWOR_CONFIDENCE_THRESHOLD")
FORK_SPEC = ("VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH", "VLLM_SPEC_CONFIDENCE_THRESHOLD")


@dataclass
class StockSpeculativeConfig:
    num_speculative_tokens: int = 1
    method: str = "eagle"


@dataclass
class ForkSpeculativeConfig:
    num_speculative_tokens: int = 1
    method: str = "eagle"
    draft_confidence_threshold: float = 0.0
    draft_length_options: list | None = None


class PydanticLikeConfig:  # not a dataclass: pydantic models list their fields in model_fields
    model_fields = {"num_speculative_tokens": None, "draft_confidence_threshold": None}


def _cap(flavour="stock", version="0.32.0", platform="cuda"):
    envs = {"stock": _envs(), "nwor-fork": _envs(*FORK_MAIN), "nwor-fork-spec": _envs(*FORK_SPEC)}[flavour]
    cls = StockSpeculativeConfig if flavour == "stock" else ForkSpeculativeConfig
    return detect_capability(envs, cls, vllm_version=version, platform=platform)


OFF = RunSpec(run_id="off")
ADAPTIVE = RunSpec(run_id="adaptive", adaptive_draft_length=True)
EARLY_EXIT = RunSpec(run_id="exit", confidence_threshold=0.5)
BOTH = RunSpec(run_id="both", adaptive_draft_length=True, confidence_threshold=0.3, draft_length_options=(2, 4))


def test_detection_does_not_import_vllm():
    had = "vllm" in sys.modules
    _cap("nwor-fork")
    assert ("vllm" in sys.modules) == had


@pytest.mark.parametrize(("flavour", "names"), [("stock", ()), ("nwor-fork", FORK_MAIN),
                                                 ("nwor-fork-spec", FORK_SPEC)])
def test_flavour_detection(flavour, names):
    cap = detect_capability(_envs(*names), ForkSpeculativeConfig if names else StockSpeculativeConfig,
                            vllm_version="0.30.0", platform="cuda")
    assert cap.flavour == flavour
    assert (cap.adaptive_env, cap.threshold_env) == (names or (None, None))
    assert cap.native == {"adaptive_draft_length": bool(names), "confidence_early_exit": bool(names)}


def test_flavour_from_module_attributes():
    cap = detect_capability(_envs(*FORK_SPEC, as_attributes=True), StockSpeculativeConfig,
                            vllm_version="0.30.0", platform="cuda")
    assert cap.flavour == "nwor-fork-spec" and cap.adaptive_env == "VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH"


def test_partial_fork_only_threshold():
    cap = detect_capability(_envs("VLLM_NWOR_CONFIDENCE_THRESHOLD"), StockSpeculativeConfig,
                            vllm_version="0.30.0", platform="cuda")
    assert cap.flavour == "nwor-fork"
    assert cap.native == {"adaptive_draft_length": False, "confidence_early_exit": True}


def test_spec_config_fields():
    assert _cap("stock").spec_config_fields == ()
    assert _cap("nwor-fork").spec_config_fields == ("draft_confidence_threshold", "draft_length_options")
    cap = detect_capability(_envs(), PydanticLikeConfig, vllm_version="0.32.0", platform="cuda")
    assert cap.spec_config_fields == ("draft_confidence_threshold",)


def test_plugin_support_by_version():
    assert _cap(version="0.32.0").plugin_supported and _cap(version="0.32.0").plugin_reason is None
    assert _cap(version="0.32.0+cpu").plugin_supported
    cap = _cap(version="0.30.0")
    assert not cap.plugin_supported and "0.30.0" in cap.plugin_reason


def test_capability_to_dict():
    d = _cap("nwor-fork").to_dict()
    assert d["flavour"] == "nwor-fork" and d["native"]["adaptive_draft_length"] is True
    assert json.loads(json.dumps(d))["vllm_version"] == "0.32.0"


# --- the fork's main line: every switch is set explicitly, on and off ---

def test_fork_main_off_sets_both_switches_off():
    plan = plan_features(OFF, _cap("nwor-fork"))
    assert plan.env == {"VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH": "0", "VLLM_NWOR_CONFIDENCE_THRESHOLD": "0.0"}
    assert plan.impl == {"adaptive_draft_length": "off", "confidence_early_exit": "off"}
    assert plan.feature_impl == "none"
    assert plan.speculative_config == {"draft_confidence_threshold": 0.0}
    assert not plan.uses_plugin


def test_fork_main_adaptive_on():
    plan = plan_features(ADAPTIVE, _cap("nwor-fork"))
    assert plan.env == {"VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH": "1", "VLLM_NWOR_CONFIDENCE_THRESHOLD": "0.0"}
    assert plan.impl == {"adaptive_draft_length": "native", "confidence_early_exit": "off"}
    assert plan.feature_impl == "native"


def test_fork_main_threshold_value():
    plan = plan_features(EARLY_EXIT, _cap("nwor-fork"))
    assert plan.env == {"VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH": "0", "VLLM_NWOR_CONFIDENCE_THRESHOLD": "0.5"}
    assert plan.speculative_config == {"draft_confidence_threshold": 0.5}
    assert plan.feature_impl == "native"


def test_fork_spec_both_on_with_options():
    plan = plan_features(BOTH, _cap("nwor-fork-spec"))
    assert plan.env == {"VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH": "1", "VLLM_SPEC_CONFIDENCE_THRESHOLD": "0.3"}
    assert plan.speculative_config == {"draft_confidence_threshold": 0.3, "draft_length_options": [2, 4]}
    d = plan.to_dict()
    assert d["feature_impl"] == "native" and d["switches"] == plan.env


def test_fork_spec_off_sets_both_switches_off():
    plan = plan_features(OFF, _cap("nwor-fork-spec"))
    assert plan.env == {"VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH": "0", "VLLM_SPEC_CONFIDENCE_THRESHOLD": "0.0"}


def test_fork_with_plugin_requested_uses_plugin_and_turns_native_off():
    spec = RunSpec(run_id="p", adaptive_draft_length=True, confidence_threshold=0.5, feature_impl="plugin")
    plan = plan_features(spec, _cap("nwor-fork"))
    assert plan.impl == {"adaptive_draft_length": "nwor-plugin", "confidence_early_exit": "nwor-plugin"}
    assert plan.feature_impl == "nwor-plugin" and plan.uses_plugin
    assert plan.env["VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH"] == "0"
    assert plan.env["VLLM_NWOR_CONFIDENCE_THRESHOLD"] == "0.0"
    assert plan.speculative_config == {"draft_confidence_threshold": 0.0}
    config = json.loads(plan.env["NWOR_PLUGIN_CONFIG"])
    assert config["adaptive_draft_length"] is True and config["confidence_threshold"] == 0.5


# --- stock vLLM: nwor's plugin, or refused ---

def test_stock_plugin_supported_uses_plugin():
    spec = RunSpec(run_id="s", confidence_threshold=0.7, draft_length_options=(3, 5))
    plan = plan_features(spec, _cap("stock", "0.32.0"), stats_path="/tmp/stats.json")
    assert plan.impl == {"adaptive_draft_length": "off", "confidence_early_exit": "nwor-plugin"}
    assert plan.feature_impl == "nwor-plugin"
    assert set(plan.env) == {"NWOR_PLUGIN_CONFIG"}
    config = json.loads(plan.env["NWOR_PLUGIN_CONFIG"])
    assert config == {"adaptive_draft_length": False, "confidence_threshold": 0.7, "draft_length_options": [3, 5],
                      "stats_path": "/tmp/stats.json"}
    assert plan.speculative_config == {}


def test_stock_off_run_sets_nothing():
    plan = plan_features(OFF, _cap("stock", "0.30.0"))
    assert plan.env == {} and plan.feature_impl == "none"


def test_stock_unsupported_version_refused():
    with pytest.raises(FeatureUnavailable) as info:
        plan_features(ADAPTIVE, _cap("stock", "0.30.0"))
    message = str(info.value)
    assert "vLLM 0.30.0 (stock, cuda)" in message
    assert "adaptive draft length" in message
    assert info.value.context == {"run_id": "adaptive", "feature": "adaptive_draft_length"}


def test_stock_unsupported_version_refused_early_exit():
    with pytest.raises(FeatureUnavailable, match="vLLM 0.30.0 .*confidence early exit"):
        plan_features(EARLY_EXIT, _cap("stock", "0.30.0"))


def test_native_requested_on_stock_refused():
    spec = RunSpec(run_id="n", adaptive_draft_length=True, feature_impl="native")
    with pytest.raises(FeatureUnavailable, match=r"vLLM 0\.32\.0 \(stock, cuda\) cannot provide adaptive draft "
                                                 r"length: it has no native implementation"):
        plan_features(spec, _cap("stock", "0.32.0"))


def test_native_requested_off_run_is_fine_on_stock():
    assert plan_features(RunSpec(feature_impl="native"), _cap("stock", "0.30.0")).feature_impl == "none"


def test_mixed_label():
    cap = detect_capability(_envs("VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH"), StockSpeculativeConfig,
                            vllm_version="0.32.0", platform="cuda")
    plan = plan_features(BOTH, cap)
    assert plan.impl == {"adaptive_draft_length": "native", "confidence_early_exit": "nwor-plugin"}
    assert plan.feature_impl == "mixed"
    assert plan.env["VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH"] == "1"
    config = json.loads(plan.env["NWOR_PLUGIN_CONFIG"])
    assert config["adaptive_draft_length"] is False and config["confidence_threshold"] == 0.3


# --- the CPU engine fix ---

@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu"])
def test_cpu_0320_adds_engine_fix(version):
    cap = _cap("stock", version, platform="cpu")
    assert cap.engine_fixes == ("cpu-expand-float",)
    assert plan_features(OFF, cap).env == {"NWOR_VLLM_FIXES": "cpu-expand-float"}
    assert plan_features(ADAPTIVE, cap).env["NWOR_VLLM_FIXES"] == "cpu-expand-float"


@pytest.mark.parametrize(("version", "platform"), [("0.32.0", "cuda"), ("0.30.0", "cpu"), ("0.32.1", "cpu")])
def test_no_engine_fix_elsewhere(version, platform):
    cap = _cap("stock", version, platform=platform)
    assert cap.engine_fixes == ()
    assert "NWOR_VLLM_FIXES" not in plan_features(OFF, cap).env


def test_capability_build_string():
    cap = Capability("0.24.0", "cuda", "nwor-fork")
    assert cap.build == "vLLM 0.24.0 (nwor-fork, cuda)"


# --- the plan carries each provider's behaviour: effective config and feature counters ---

ENGINE_CONF = {"method": "eagle", "num_speculative_tokens": 10, "draft_length_options": (5, 10),
               "confidence_threshold": None, "dtype": "torch.float32", "source": "engine"}
PLUGIN_STATS = {"tokens_stopped": 3, "checks": 12, "stop_pct": 25.0, "steps": 4, "draft_length_histogram": {5: 4},
                "draft_length_options": [5, 10],
                "config": {"confidence_threshold": 0.5, "adaptive_draft_length": True}}


def test_effective_config_of_a_plugin_run_is_the_plugins():
    plan = plan_features(BOTH, _cap("stock", "0.32.0"))
    out = plan.effective(ENGINE_CONF, PLUGIN_STATS)
    assert out == {**ENGINE_CONF, "draft_length_options": [5, 10], "confidence_threshold": 0.5,
                   "adaptive_draft_length": True, "source": "nwor-plugin"}


def test_effective_config_of_a_native_or_off_run_is_the_engines():
    for plan in (plan_features(EARLY_EXIT, _cap("nwor-fork")), plan_features(OFF, _cap("stock", "0.32.0"))):
        assert plan.effective(ENGINE_CONF, PLUGIN_STATS) == {**ENGINE_CONF, "draft_length_options": [5, 10]}


def test_feature_stats_from_the_plugins_counters():
    early, lengths = plan_features(EARLY_EXIT, _cap("stock", "0.32.0")).feature_stats(PLUGIN_STATS, None)
    assert early == {"status": "ok", "source": "nwor-plugin", "tokens_stopped": 3, "checks": 12, "stop_pct": 25.0,
                     "reason": None}
    assert lengths == {"status": "ok", "steps": 4, "histogram": {"5": 4}}


def test_feature_stats_of_the_fork_come_from_its_log_line(tmp_path):
    from nwor.features import native_early_exit_from_log

    log = tmp_path / "run.vllm.log"
    log.write_text("INFO Confidence early exit stats: 1 tokens stopped out of 9 checks (11.1%)\n"
                   "INFO Confidence early exit stats: 7 tokens stopped out of 70 checks (10.0%)\n")
    assert native_early_exit_from_log(log) == {"tokens_stopped": 7, "checks": 70, "stop_pct": 10.0}  # the last
    early, lengths = plan_features(EARLY_EXIT, _cap("nwor-fork")).feature_stats(None, log)
    assert early["source"] == "native-log" and early["tokens_stopped"] == 7 and lengths["histogram"] is None
    early, _ = plan_features(EARLY_EXIT, _cap("nwor-fork")).feature_stats(None, tmp_path / "none.log")
    assert early["status"] == "unavailable" and early["reason"] == "the fork logged no early-exit stats line"


def test_feature_stats_of_an_off_run_say_why_they_are_null():
    early, lengths = plan_features(OFF, _cap("stock", "0.32.0")).feature_stats(None, None)
    assert early["tokens_stopped"] is None and early["reason"] == "features off for this run"
    assert lengths == {"status": "unavailable", "histogram": None, "reason": "features off for this run"}
