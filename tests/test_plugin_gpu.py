"""nwor.plugin on CUDA vLLM 0.24.0: runs scripts/gpu_validate_plugin.py (one engine process per config) and
asserts on its JSON (`gpu`: skipped without CUDA + vLLM 0.24.0), plus that script's checks on synthetic
results (fast, anywhere).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_validate_plugin.py"
N = 4  # num_speculative_tokens the script uses


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_validate_plugin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the script's checks on synthetic results (no GPU) ------------------------------------------------

def _stats(steps, histogram, checks=0, stopped=0):
    return {"steps": steps, "draft_length_histogram": histogram, "checks": checks, "tokens_stopped": stopped,
            "stop_pct": 100.0 * stopped / checks if checks else None, "acceptance_rate_ewma": 0.4,
            "draft_length_options": [2, 4, 8]}


def _result(outputs, stats_by_t=None, mean_len=4.0, read_stats_error=None,
            sync_check={"sync_check": True, "cuda_sync_debug_mode": True}):
    runs = {}
    for t, stats in (stats_by_t or {"t0.0": None}).items():
        run = {"outputs": outputs, "spec_decode_metrics": {
            "vllm:spec_decode_num_drafts": 100, "vllm:spec_decode_num_draft_tokens": int(100 * mean_len)}}
        if stats is not None:
            run["stats"] = stats
        runs[t] = run
    return {"use_v2_model_runner": False, "async_scheduling": False, "cudagraph_mode": "NONE",
            "sync_check": None if read_stats_error else sync_check,
            "engine_start_s": 50.0, "generate_latency_s": [1.0, 1.1, 0.9, 1.0, 1.2], "runs": runs,
            "read_stats_error": read_stats_error}


def _consistent_results():
    tokens = [[1, 2, 3], [4, 5, 6]]
    return {
        "stock": _result(tokens, read_stats_error="FeatureUnavailable: engine drafter is EagleProposer"),
        "off": _result(tokens, {"t0.0": _stats(20, {N: 20})}),
        "threshold_0.99": _result(tokens, {"t0.0": _stats(24, {N: 24}, checks=300, stopped=290)}),
        "adaptive": _result(tokens, {"t0.0": _stats(22, {2: 6, 4: 16}), "t0.7": _stats(30, {2: 25, 4: 5})},
                            mean_len=3.0),
    }


def test_checks_pass_on_consistent_results():
    script = _load_script()
    summary = script.summarize(_consistent_results(), N)
    assert summary["ok"], summary["failed_checks"]
    assert summary["configs"]["off"]["median_latency_ratio_vs_stock"] == pytest.approx(1.0, rel=1e-12)
    assert summary["configs"]["adaptive"]["runs"]["t0.0"]["first_mismatch_vs_stock"] is None


def test_checks_flag_changed_output_failed_engine_and_unshortened_drafts():
    script = _load_script()
    results = _consistent_results()
    results["off"]["runs"]["t0.0"]["outputs"] = [[1, 2, 3], [4, 9, 6]]
    results["threshold_0.99"] = None
    results["adaptive"]["runs"]["t0.0"]["spec_decode_metrics"]["vllm:spec_decode_num_draft_tokens"] = 400
    summary = script.summarize(results, N)
    assert summary["failed_checks"] == ["adaptive_shorter_drafts_verified", "t0_equal_stock_off",
                                        "threshold_0.99_ran"]
    assert summary["configs"]["off"]["runs"]["t0.0"]["first_mismatch_vs_stock"] == [1, 1]


def test_checks_flag_a_sync_check_that_was_not_on_cuda():
    script = _load_script()
    results = _consistent_results()
    results["adaptive"]["sync_check"] = {"sync_check": True, "cuda_sync_debug_mode": False}
    assert script.summarize(results, N)["failed_checks"] == ["sync_check_clean"]


def test_checks_flag_adaptive_that_never_shortens():
    script = _load_script()
    results = _consistent_results()
    for run in results["adaptive"]["runs"].values():
        run["stats"]["draft_length_histogram"] = {N: run["stats"]["steps"]}
    assert script.evaluate(results, N)["adaptive_varies"] is False


# ---- the script's engines are nwor's: specs, feature plans and arguments (no GPU) -----------------------

def test_each_config_is_a_nwor_run_with_its_feature_plan():
    from nwor.features import Capability
    from nwor.plugin import ENV_VAR

    script = _load_script()
    args = script.parse_args(["--out", "x.json"])
    cap = Capability(vllm_version="0.24.0", platform="cuda", flavour="stock", plugin_supported=True)
    plans = {name: script.engine_plan(name, script.spec_for(name, args), cap) for name in script.CONFIGS}
    assert ENV_VAR not in plans["stock"].env  # stock vLLM: the plugin is not loaded
    configs = {name: json.loads(plan.env[ENV_VAR]) for name, plan in plans.items() if name != "stock"}
    assert configs["off"]["adaptive_draft_length"] is False and configs["off"]["confidence_threshold"] == 0.0
    assert configs["threshold_0.99"]["confidence_threshold"] == 0.99
    assert configs["adaptive"]["adaptive_draft_length"] is True
    # Every engine gets the settings the plugin needs on 0.24.0, the plugin loaded or not (nwor.features).
    assert all(plan.engine_kwargs == plans["stock"].engine_kwargs for plan in plans.values())
    spec = script.spec_for("adaptive", args)
    assert (spec.num_speculative_tokens, spec.num_requests, spec.max_new_tokens, spec.dtype) == (N, 8, 32, "float16")
    assert spec.prompt_set.startswith("builtin:")  # the lent machine has no network


def test_script_drives_no_engine_of_its_own():
    text = SCRIPT.read_text()
    assert "LLM(" not in text and "mkstemp" not in text and "get_metrics" not in text


def test_bad_arguments_are_one_line_before_any_engine(tmp_path, capsys):
    script = _load_script()
    with pytest.raises(SystemExit) as info:
        script.parse_args(["--out", "x.json", "--configs", "stock,bogus"])
    assert info.value.code == 2 and "unknown configs bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        script.parse_args(["--out", "x.json", "--target", str(tmp_path), "--draft", str(tmp_path)])
    assert info.value.code == 2 and "config.json" in capsys.readouterr().err


# ---- the real engine on the lent GPU --------------------------------------------------------------------

def _gpu_skip_reason() -> str | None:
    version = _load_script().installed_vllm_version()
    if version is None:
        return "vLLM is not installed"
    if version.split("+", 1)[0] != "0.24.0":
        return f"needs CUDA vLLM 0.24.0, installed vLLM is {version}"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from nwor.tiny import TinyRecipe, ensure_tiny_models

    tiny = ensure_tiny_models(TinyRecipe())
    out = tmp_path_factory.mktemp("plugin_gpu") / "validation.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--target", tiny.target, "--draft", tiny.draft,
                           "--out", str(out)], capture_output=True, text=True, timeout=1500)
    if not out.exists():
        raise AssertionError(f"validation script wrote nothing (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(out.read_text())
    print(json.dumps({k: summary[k] for k in ("ok", "failed_checks", "checks", "configs")}, indent=1))
    assert (proc.returncode == 0) == summary["ok"]
    return summary


@pytest.mark.gpu
def test_every_engine_ran_on_the_v1_runner(validation):
    for name, config in validation["configs"].items():
        assert config is not None, f"{name}: {validation['processes'][name].get('log_tail')}"
        assert config["use_v2_model_runner"] is False and config["async_scheduling"] is False


@pytest.mark.gpu
def test_outputs_identical_at_temperature_zero(validation):
    for name in ("off", "threshold_0.99", "adaptive"):
        assert validation["checks"][f"t0_equal_stock_{name}"], validation["configs"][name]["runs"]["t0.0"]


@pytest.mark.gpu
def test_hooks_never_synchronise(validation):
    # Every plugin engine ran its batches with nwor.plugin.set_sync_check on (CUDA sync debug mode "error").
    assert validation["checks"]["sync_check_clean"], {n: c and c["sync_check"] for n, c in validation["configs"].items()}


@pytest.mark.gpu
def test_early_exit_counters(validation):
    assert validation["checks"]["stock_has_no_plugin"]
    assert validation["checks"]["off_counts_nothing"]
    threshold = validation["configs"]["threshold_0.99"]["runs"]["t0.0"]
    assert validation["checks"]["threshold_stops_tokens"], threshold
    assert 0 < threshold["tokens_stopped"] <= threshold["checks"]


@pytest.mark.gpu
def test_adaptive_length_follows_acceptance(validation):
    runs = validation["configs"]["adaptive"]["runs"]
    histograms = {t: run["draft_length_histogram"] for t, run in runs.items()}
    assert set(histograms) == {"t0.0", "t0.7"}
    assert set().union(*histograms.values()) <= {"2", "4"}, histograms  # 8 is capped at n = 4
    assert validation["checks"]["adaptive_varies"], histograms
    assert validation["checks"]["adaptive_shorter_drafts_verified"], runs


@pytest.mark.gpu
def test_latency_reported_for_every_config(validation):
    for name, config in validation["configs"].items():
        assert len(config["generate_latency_s"]) == 5 and config["median_generate_latency_s"] > 0, name
    assert validation["ok"], validation["failed_checks"]


# ---- scripts/profile_gate.py's pure parts ----------------------------------------------------------------

def _load_gate_script():
    spec = importlib.util.spec_from_file_location("profile_gate", SCRIPT.parent / "profile_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gate_script_alternates_arms_and_takes_median_ratio():
    gate = _load_gate_script()
    order = gate.abba_order(2)
    assert order == ["off", "gate", "gate", "off", "gate", "off", "off", "gate"]
    assert order.count("off") == order.count("gate") == 4
    timing = gate.summarize_timing([("off", 1.0), ("gate", 1.2), ("gate", 1.1), ("off", 0.9), ("off", 5.0)])
    assert timing["median_latency_s"] == {"off": 1.0, "gate": pytest.approx(1.15)}
    assert timing["gate_over_off"] == pytest.approx(1.15)
    assert gate.arms(1e-4)["gate"].confidence_threshold == 1e-4 and not gate.arms(1e-4)["off"].features_on
