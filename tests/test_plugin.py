"""Tests for nwor.plugin: config parsing, version gate and draft-length choice (fast), and the real CPU
engine on the tiny models (two engine starts: stock vLLM, then vLLM with the plugin switched between
configs through `nwor.plugin.configure`). Run as a script, this file is the engine driver itself.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import statistics
import subprocess
import sys
import time

import pytest

from nwor.errors import ConfigError, FeatureUnavailable
from nwor.plugin import ENV_VAR, SUPPORTED_VLLM_VERSIONS, PluginConfig, check_supported
from nwor.plugin.elastic import ElasticState, choose_draft_length, default_draft_length_options

PROMPTS = [
    "the dragon was", "write a story about the river", "how do I print a list", "thanks for the help",
    "the wizard said that", "one day people will", "what is the answer to", "the castle at night",
]
MAX_TOKENS = 32
TIMED_REPEATS = 5


def test_default_options_follow_the_fork():
    assert default_draft_length_options(4) == (2, 4, 8)
    assert default_draft_length_options(5) == (2, 5, 8)
    assert default_draft_length_options(2) == (2, 4)
    assert default_draft_length_options(10) == (5, 8, 10)


@pytest.mark.parametrize(
    ("ewma", "expected"), [(0.71, 8), (0.7, 4), (0.51, 4), (0.5, 2), (0.31, 2), (0.3, 2), (0.0, 2)]
)
def test_choose_draft_length_thresholds(ewma, expected):
    assert choose_draft_length(ewma, (2, 4, 8)) == expected


def test_choose_draft_length_two_and_four_options():
    assert [choose_draft_length(e, (2, 4)) for e in (0.8, 0.6, 0.4, 0.2)] == [4, 4, 2, 2]
    assert [choose_draft_length(e, (1, 2, 3, 4)) for e in (0.8, 0.6, 0.4, 0.2)] == [4, 3, 2, 1]


def test_state_caps_at_requested_and_tracks_ewma():
    state = ElasticState(PluginConfig(adaptive_draft_length=True), num_speculative_tokens=4)
    state.ewma = 0.9
    assert state.next_draft_length(4) == 4  # option 8 capped to the scheduled 4, as the fork caps it
    for _ in range(30):
        state.observe_acceptance(accepted=0, drafted=8)
    assert state.ewma == pytest.approx(0.9 * 0.9**30, rel=1e-12)
    assert state.next_draft_length(4) == 2
    state.observe_acceptance(accepted=3, drafted=0)  # a step without drafts leaves the EWMA alone
    assert state.next_draft_length(0) == 0
    assert state.histogram == {4: 1, 2: 1, 0: 1} and state.steps == 3


def test_state_without_adaptive_keeps_requested_length():
    state = ElasticState(PluginConfig(), num_speculative_tokens=4)
    state.ewma = 0.0
    assert state.next_draft_length(4) == 4


def test_config_parses_and_rejects():
    config = PluginConfig.from_json('{"adaptive_draft_length": true, "draft_length_options": [8, 2, 4, 4],'
                                    ' "confidence_threshold": 0.5, "stats_path": null}')
    assert config.draft_length_options == (2, 4, 8)
    assert PluginConfig.from_json(config.to_json()) == config
    for bad in ('{"confidence_threshold": 1.5}', '{"draft_length_options": [0]}', '{"adaptive": true}',
                '[1]', 'not json', '{"adaptive_draft_length": 1}'):
        with pytest.raises(ConfigError):
            PluginConfig.from_json(bad)


def test_version_gate():
    check_supported("0.32.0"); check_supported("0.32.0+cpu"); check_supported("0.24.0")
    with pytest.raises(FeatureUnavailable) as info:
        check_supported("0.25.0")
    assert "0.32.0" in str(info.value) and "\n" not in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).context == {"vllm_version": "0.25.0"}
    assert SUPPORTED_VLLM_VERSIONS == ("0.32.0", "0.24.0")


def test_register_is_inert_without_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    import nwor.plugin

    nwor.plugin.register()  # must not import vLLM or patch anything
    assert "nwor.plugin.elastic" not in sys.modules or not nwor.plugin.elastic.DRAFTERS


def test_sync_check_raises_on_host_reads_inside_hook_code_only():
    import torch

    from nwor.plugin import checks

    value = torch.tensor([3])
    assert checks.region("nwor::x") is checks.region("nwor::y")  # off: one shared no-op context
    try:
        checks.enable_sync_check(True)
        assert value.item() == 3 and value.tolist() == [3] and bool(value)  # outside nwor code: allowed
        for read in (lambda: value.item(), lambda: value.tolist(), lambda: value.cpu(), lambda: bool(value),
                     lambda: int(value), lambda: float(value), lambda: value.numpy()):
            with pytest.raises(checks.HostReadInHook):
                with checks.region("nwor::gate"):
                    read()
        with checks.profiled("nwor::propose"):  # a profiler range around vLLM code is not checked
            assert value.item() == 3
    finally:
        checks.enable_sync_check(False)
    with checks.region("nwor::gate"):
        assert value.item() == 3  # switched off: methods restored


def test_stats_line_has_the_forks_format():
    from nwor.plugin import format_stats_line

    assert format_stats_line(41, 1000) == "Confidence early exit stats: 41 tokens stopped out of 1000 checks (4.10%)"
    assert format_stats_line(0, 0, run_id="run1_t0.5", source="nwor-plugin") == (
        "Confidence early exit stats: 0 tokens stopped out of 0 checks (n/a) [run=run1_t0.5, source=nwor-plugin]")
    for bad in ((5, 4), (-1, 3)):
        with pytest.raises(ValueError):
            format_stats_line(*bad)


def test_stats_line_for_a_result_from_whichever_source():
    from nwor.plugin import line_for_result

    def result(threshold, early):
        return {"run_id": "run2_x", "spec": {"confidence_threshold": threshold}, "early_exit": early}

    plugin_run = result(0.3, {"status": "ok", "source": "nwor-plugin", "tokens_stopped": 2267, "checks": 62946})
    assert line_for_result(plugin_run) == ("Confidence early exit stats: 2267 tokens stopped out of 62946 checks "
                                           "(3.60%) [run=run2_x, source=nwor-plugin]")
    fork_run = result(0.5, {"status": "ok", "source": "native-log", "tokens_stopped": 5, "checks": 10})
    assert line_for_result(fork_run).endswith("(50.00%) [run=run2_x, source=native-log]")
    assert line_for_result(result(0.0, {"status": "ok", "tokens_stopped": 0, "checks": 0})) is None
    assert line_for_result(result(0.5, {"status": "unavailable", "tokens_stopped": None})) is None
    # The early-exit grid's threshold-0.0 runs get a line too (no check ran), so the grep lists every run.
    baseline = {**result(0.0, {"status": "unavailable", "tokens_stopped": None}), "grid": "early_exit_grid",
                "status": "ok"}
    assert line_for_result(baseline) == ("Confidence early exit stats: 0 tokens stopped out of 0 checks (n/a) "
                                         "[run=run2_x, source=gate off (threshold 0.0)]")
    assert line_for_result({**baseline, "status": "failed"}) is None


def test_ewma_alpha_is_the_forks_unless_set():
    assert PluginConfig().ewma_alpha == 0.1 and PluginConfig().nwor_extensions == []
    config = PluginConfig(adaptive_draft_length=True, ewma_alpha=0.5)
    assert config.nwor_extensions == ["ewma_alpha"] and PluginConfig.from_json(config.to_json()) == config
    assert "ewma_alpha" not in PluginConfig().to_json()  # the fork's value is implied: fork-run JSON unchanged
    state = ElasticState(config, num_speculative_tokens=4)
    state.observe_acceptance(accepted=4, drafted=4)
    assert state.ewma == pytest.approx(0.75) and state.snapshot(0)["nwor_extensions"] == ["ewma_alpha"]
    for bad in (0.0, 1.5, True):
        with pytest.raises(ConfigError):
            PluginConfig(ewma_alpha=bad)


# ---- engine tests -----------------------------------------------------------------------------------

def _engine_script_run(mode: str, out_path: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, mode, out_path], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"engine run {mode} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    with open(out_path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    names = [e.name for e in importlib.metadata.entry_points(group="vllm.general_plugins")]
    assert "nwor_elastic" in names, "entry point nwor_elastic missing: reinstall nwor (pip install -e . --no-deps)"
    from nwor.tiny import ensure_tiny_models

    tiny = ensure_tiny_models()
    folder = tmp_path_factory.mktemp("plugin")
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "NWOR_TEST_TARGET": tiny.target,
           "NWOR_TEST_DRAFT": tiny.draft}
    env.pop(ENV_VAR, None)
    stock = _engine_script_run("stock", str(folder / "stock.json"), env)
    plugin_env = {**env, ENV_VAR: PluginConfig(stats_path=str(folder / "exit_stats.json")).to_json()}
    plugin = _engine_script_run("plugin", str(folder / "plugin.json"), plugin_env)
    exit_stats_path = folder / "exit_stats.json"
    plugin["exit_stats"] = json.loads(exit_stats_path.read_text()) if exit_stats_path.exists() else None
    print(json.dumps({"stock": stock, "plugin": plugin}, indent=1, default=str))
    return stock, plugin


@pytest.mark.engine
def test_stock_engine_has_no_plugin(engine_runs):
    stock, _ = engine_runs
    assert stock["read_stats_error"].startswith("FeatureUnavailable")


@pytest.mark.engine
def test_outputs_identical_at_temperature_zero(engine_runs):
    stock, plugin = engine_runs
    for variant, outputs in plugin["outputs_t0"].items():
        assert outputs == stock["outputs_t0"], f"{variant} changed the target's greedy output"


@pytest.mark.engine
def test_early_exit_counters(engine_runs):
    _, plugin = engine_runs
    stats = plugin["stats"]
    high, low, zero = stats["threshold_0.99"], stats["threshold_1e-4"], stats["off"]
    # n = 4 drafts per step: the fork's gate decides loop iterations 1 and 2, i.e. 2 checks per row per step.
    assert high["checks"] > 0 and high["checks"] % 2 == 0 and high["tokens_stopped"] > 0
    # max softmax >= 1/vocab = 1e-3 > 1e-4: checks run, nothing stops
    assert low["checks"] > 0 and low["tokens_stopped"] == 0 and low["stop_pct"] == 0.0
    assert zero["checks"] == 0 and zero["tokens_stopped"] == 0 and zero["stop_pct"] is None


@pytest.mark.engine
def test_controller_trace_books_what_the_counters_count(engine_runs):
    # Per-step tokens stopped come from a device counter written under the sync check; their sums must be the
    # plugin's own totals, and a trace has one row per step the stats counted.
    _, plugin = engine_runs
    for name, stats in plugin["stats"].items():
        trace = plugin["traces"][name]
        assert trace["status"] == "ok" and trace["steps"] == stats["steps"] == trace["points"], name
        gate = name.startswith("threshold") or name.startswith("both")
        if gate:
            assert sum(trace["checks"]) == stats["checks"] and sum(trace["tokens_stopped"]) == stats["tokens_stopped"]
        else:
            assert set(trace["tokens_stopped"]) == {None} and set(trace["checks"]) == {None}, name
        adaptive = name.startswith("adaptive") or name.startswith("both")
        assert (None not in trace["ewma"]) == adaptive, name
        if adaptive:
            booked = sum(a for a in trace["accepted"] if a is not None)
            assert 0 < booked <= stats["ewma_input"]["accepted"], name
            assert trace["ewma"][0] == 0.5  # the first step chose from the configured start value


@pytest.mark.engine
def test_configure_resets_state_and_switches_within_one_engine(engine_runs):
    _, plugin = engine_runs
    assert plugin["sync_check"]["sync_check"] is True
    for name, fresh in plugin["after_configure"].items():
        assert (fresh["steps"], fresh["checks"], fresh["tokens_stopped"]) == (0, 0, 0), name
        assert fresh["acceptance_rate_ewma"] == 0.5 and fresh["draft_length_histogram"] == {}, name
    stats = plugin["stats"]
    # The same config after five others: the same counts, so nothing carried over.
    # (Step counts may differ by one: vLLM's first step admits the prompts as they arrive.)
    again, first = stats["threshold_0.99_again"], stats["threshold_0.99"]
    assert (again["checks"], again["tokens_stopped"]) == (first["checks"], first["tokens_stopped"])
    assert stats["adaptive_t1"]["nwor_extensions"] == [] and stats["adaptive_t1"]["ewma_alpha"] == 0.1
    alpha = stats["adaptive_alpha0.5_t1"]
    assert alpha["nwor_extensions"] == ["ewma_alpha"] and alpha["config"]["ewma_alpha"] == 0.5 == alpha["ewma_alpha"]
    # The option reaches the controller: the same workload ends at another EWMA (which one is lower depends
    # on the last few steps, which alpha 0.5 weights heavily), and low acceptance at T = 1 pulls both below 0.5.
    assert alpha["acceptance_rate_ewma"] != stats["adaptive_t1"]["acceptance_rate_ewma"]
    assert max(alpha["acceptance_rate_ewma"], stats["adaptive_t1"]["acceptance_rate_ewma"]) < 0.5


@pytest.mark.engine
def test_configure_keep_controller_resumes_each_configs_ewma(engine_runs):
    _, plugin = engine_runs
    # Within-engine arms alternate by batch; each must resume its own EWMA, not restart at 0.5.
    assert plugin["resumed_adaptive"]["acceptance_rate_ewma"] == plugin["stats"]["adaptive_t1"]["acceptance_rate_ewma"]
    assert plugin["resumed_adaptive"]["acceptance_rate_ewma"] != 0.5
    assert plugin["resumed_both"]["acceptance_rate_ewma"] == plugin["stats"]["both_t0"]["acceptance_rate_ewma"]
    assert plugin["resumed_adaptive"]["steps"] == 0 and plugin["resumed_adaptive"]["checks"] == 0


@pytest.mark.engine
def test_profiler_sees_the_gate_ranges(engine_runs):
    _, plugin = engine_runs
    ranges = plugin["profile"]["ranges"]
    for name in ("nwor::propose", "nwor::confidence", "nwor::seq_lens", "nwor::gate"):
        assert ranges.get(name, {}).get("count", 0) > 0, (name, sorted(ranges))
    # K = 4 drafts: confidences after loop iterations 0 and 1, gates at iterations 1 and 2 (the fork's
    # schedule; the last confidence would gate nothing and is not computed).
    assert ranges["nwor::confidence"]["count"] == ranges["nwor::gate"]["count"] == ranges["nwor::seq_lens"]["count"]


@pytest.mark.engine
def test_adaptive_length_follows_acceptance(engine_runs):
    _, plugin = engine_runs
    stats = plugin["stats"]
    assert stats["off"]["draft_length_histogram"] == {"4": stats["off"]["steps"]}
    hist_greedy = stats["adaptive_t0"]["draft_length_histogram"]
    hist_sampled = stats["adaptive_t1"]["draft_length_histogram"]
    assert hist_greedy != hist_sampled
    assert set(hist_greedy) | set(hist_sampled) <= {"2", "4"}  # 8 is capped at num_speculative_tokens=4
    # The EWMA's inputs (read on the device, applied one step later) agree with vLLM's own counters: all
    # but the batch's last verification, whose acceptance is still pending when the batch ends.
    for name in ("adaptive_t0", "adaptive_t1", "adaptive_alpha0.5_t1", "both_t0"):
        seen, vllm = stats[name]["ewma_input"], stats[name]["vllm_delta"]
        drafted, accepted = vllm["vllm:spec_decode_num_draft_tokens"], vllm["vllm:spec_decode_num_accepted_tokens"]
        assert 0 < seen["drafted"] <= drafted and drafted - seen["drafted"] <= 4 * len(PROMPTS), (name, seen, vllm)
        assert 0 <= accepted - seen["accepted"] <= 4 * len(PROMPTS), (name, seen, vllm)


@pytest.mark.engine
def test_stats_file_written_at_engine_exit(engine_runs):
    _, plugin = engine_runs
    assert plugin["exit_stats"] is not None, "engine process did not write stats_path at exit"
    assert plugin["exit_stats"]["steps"] > 0


# ---- engine driver (runs in a subprocess: one engine per process) -----------------------------------

def _generate(llm, temperature: float):
    from vllm import SamplingParams

    params = SamplingParams(temperature=temperature, max_tokens=MAX_TOKENS, ignore_eos=True, seed=0)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def _timed(llm) -> list[float]:
    samples = []
    for _ in range(TIMED_REPEATS):
        start = time.perf_counter()
        _generate(llm, 0.0)
        samples.append(time.perf_counter() - start)
    return samples


def _spec_counters(llm) -> dict:
    return {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:spec_decode_num") and hasattr(m, "value")}


def _drive(mode: str, out_path: str) -> None:
    from vllm import LLM

    import nwor.plugin as plugin

    llm = LLM(model=os.environ["NWOR_TEST_TARGET"], speculative_config={
        "method": "eagle", "model": os.environ["NWOR_TEST_DRAFT"], "num_speculative_tokens": 4},
        gpu_memory_utilization=0.2, max_model_len=512, disable_log_stats=False, seed=0)
    _generate(llm, 0.0)  # warm-up
    result: dict = {"mode": mode}
    if mode == "stock":
        try:
            plugin.read_stats(llm)
            result["read_stats_error"] = None
        except FeatureUnavailable as err:
            result["read_stats_error"] = f"FeatureUnavailable: {err}"
        result["latency_s"] = _timed(llm)
        result["outputs_t0"] = [list(t) for t in _generate(llm, 0.0)]
    else:
        variants = {
            "off": (PluginConfig(), 0.0),
            "threshold_0.99": (PluginConfig(confidence_threshold=0.99), 0.0),
            "threshold_1e-4": (PluginConfig(confidence_threshold=1e-4), 0.0),
            "adaptive_t0": (PluginConfig(adaptive_draft_length=True), 0.0),
            "adaptive_t1": (PluginConfig(adaptive_draft_length=True), 1.0),
            "adaptive_alpha0.5_t1": (PluginConfig(adaptive_draft_length=True, ewma_alpha=0.5), 1.0),
            "both_t0": (PluginConfig(adaptive_draft_length=True, confidence_threshold=0.99), 0.0),
            "threshold_0.99_again": (PluginConfig(confidence_threshold=0.99), 0.0),
        }
        plugin.reset_stats(llm)
        result["latency_s"] = _timed(llm)  # plugin loaded, features off
        # Every variant runs with the sync check on: a host read in nwor's hook code fails the step.
        result["sync_check"] = plugin.set_sync_check(llm, True)
        result["outputs_t0"], result["stats"], result["after_configure"], result["traces"] = {}, {}, {}, {}
        for name, (config, temperature) in variants.items():
            plugin.configure(llm, config, trace_label=name)
            result["after_configure"][name] = plugin.read_stats(llm)
            before = _spec_counters(llm)
            outputs = _generate(llm, temperature)
            result["stats"][name] = plugin.read_stats(llm)
            result["traces"][name] = plugin.read_trace(llm, name)  # the controller trace of this variant's steps
            after = _spec_counters(llm)
            result["stats"][name]["vllm_delta"] = {k: after[k] - before.get(k, 0) for k in after}
            if temperature == 0.0:
                result["outputs_t0"][name] = [list(t) for t in outputs]
        # keep_controller: adaptive_t1's EWMA comes back after other configs ran; without it, 0.5 again.
        plugin.configure(llm, PluginConfig(adaptive_draft_length=True), keep_controller=True)
        result["resumed_adaptive"] = plugin.read_stats(llm)
        plugin.configure(llm, PluginConfig(adaptive_draft_length=True, confidence_threshold=0.99),
                         keep_controller=True)
        result["resumed_both"] = plugin.read_stats(llm)
        plugin.set_sync_check(llm, False)
        # The profiler path the GPU trace script uses (scripts/profile_gate.py), on a gated batch.
        plugin.configure(llm, PluginConfig(confidence_threshold=1e-4))
        plugin.profile_start(llm)
        _generate(llm, 0.0)
        result["profile"] = plugin.profile_stop(llm, None)
        plugin.configure(llm, PluginConfig(stats_path=plugin.read_config().stats_path))
        _generate(llm, 0.0)  # what the exit-time stats file should hold
    result["metrics"] = {m.name: getattr(m, "value", None) for m in llm.get_metrics()
                         if m.name.startswith("vllm:spec_decode") and hasattr(m, "value")}
    result["median_latency_s"] = statistics.median(result["latency_s"])
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _drive(sys.argv[1], sys.argv[2])
