"""Tests for nwor.grid against the real parameters/: the 27 run ids, the full and smoke profiles' values,
the adaptive pairing, env overrides, and every kind of bad input (all ConfigError, named)."""
from __future__ import annotations

import math
import shutil

import pytest

from nwor.config import DEFAULT_NCU_METRICS
from nwor.errors import ConfigError
from nwor.grid import GRIDS, PARAMETERS_DIR, expand, expand_all, load_grid, load_profile
from nwor.ncu_metrics import NCU_METRICS

ADAPTIVE_WORKLOADS = {  # W: (requests, tokens, temperature, draft tokens)
    1: (12, 64, 0.0, 10), 2: (12, 64, 0.7, 10), 3: (36, 128, 0.0, 10), 4: (36, 128, 0.7, 10),
    5: (60, 64, 0.0, 10), 6: (36, 256, 0.0, 10), 7: (36, 128, 0.0, 5), 8: (36, 128, 0.0, 15),
}
EARLY_EXIT_WORKLOADS = {  # N: (tokens, temperature, threshold)
    1: (128, 0.0, 0.0), 2: (128, 0.0, 0.3), 3: (128, 0.0, 0.5), 4: (128, 0.0, 0.7),
    5: (128, 0.7, 0.0), 6: (128, 0.7, 0.5), 7: (256, 0.0, 0.5),
}
# The literal list, in grid order (adaptive 0 then 1 within each workload).
EXPECTED_IDS = [
    "run1_r12_t64_temp0.0_d10_adaptive0", "run1_r12_t64_temp0.0_d10_adaptive1",
    "run2_r12_t64_temp0.7_d10_adaptive0", "run2_r12_t64_temp0.7_d10_adaptive1",
    "run3_r36_t128_temp0.0_d10_adaptive0", "run3_r36_t128_temp0.0_d10_adaptive1",
    "run4_r36_t128_temp0.7_d10_adaptive0", "run4_r36_t128_temp0.7_d10_adaptive1",
    "run5_r60_t64_temp0.0_d10_adaptive0", "run5_r60_t64_temp0.0_d10_adaptive1",
    "run6_r36_t256_temp0.0_d10_adaptive0", "run6_r36_t256_temp0.0_d10_adaptive1",
    "run7_r36_t128_temp0.0_d5_adaptive0", "run7_r36_t128_temp0.0_d5_adaptive1",
    "run8_r36_t128_temp0.0_d15_adaptive0", "run8_r36_t128_temp0.0_d15_adaptive1",
    "run1_r36_t128_temp0.0_thresh0.0", "run2_r36_t128_temp0.0_thresh0.3", "run3_r36_t128_temp0.0_thresh0.5",
    "run4_r36_t128_temp0.0_thresh0.7", "run5_r36_t128_temp0.7_thresh0.0", "run6_r36_t128_temp0.7_thresh0.5",
    "run7_r36_t256_temp0.0_thresh0.5",
    "scenario_a_code_completion", "scenario_b_chatbot", "scenario_c_high_throughput",
    "scenario_d_creative_writing",
]
# The calibration grid every profile measures after the seed's 27 (`all` includes it).
CALIBRATION_IDS = ["aa_run3_r36_t128_temp0.0_d10_within", "aa_run3_r36_t128_temp0.0_d10_engines",
                   "overhead_run1_r36_t128_temp0.0_d10_thresh0.5"]
ALL_IDS = EXPECTED_IDS + CALIBRATION_IDS


ENV_VARS = ("TARGET_MODEL", "DRAFT_MODEL", "TENSOR_PARALLEL_SIZE")


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _expanded(profile: str) -> dict:
    with pytest.MonkeyPatch.context() as mp:  # module-scoped fixtures run before the autouse one
        for var in ENV_VARS:
            mp.delenv(var, raising=False)
        return {s.run_id: s for s in expand_all(["all"], profile)}


@pytest.fixture(scope="module")
def full():
    return _expanded("full")


@pytest.fixture(scope="module")
def smoke():
    return _expanded("smoke")


def test_full_has_exactly_the_27_ids_then_calibration():
    assert [s.run_id for s in expand_all(["all"], "full")] == ALL_IDS
    assert len(set(EXPECTED_IDS)) == 27
    seed_grids = ["adaptive_grid", "early_exit_grid", "oneoff_scenarios"]
    assert [s.run_id for s in expand_all(seed_grids, "full")] == EXPECTED_IDS


def test_expected_ids_follow_the_workload_tables():
    ids = [f"run{w}_r{r}_t{t}_temp{x}_d{d}_adaptive{a}" for w, (r, t, x, d) in ADAPTIVE_WORKLOADS.items()
           for a in (0, 1)]
    ids += [f"run{n}_r36_t{t}_temp{x}_thresh{y}" for n, (t, x, y) in EARLY_EXIT_WORKLOADS.items()]
    assert ids == EXPECTED_IDS[:23]


def test_smoke_has_the_same_names():
    assert [s.run_id for s in expand_all(["all"], "smoke")] == ALL_IDS


def test_grids_and_order():
    specs = expand_all([], "full")
    assert [s.grid for s in specs] == ["adaptive_grid"] * 16 + ["early_exit_grid"] * 7 + ["oneoff_scenarios"] * 4 + ["calibration_grid"] * 3
    assert {s.profile for s in specs} == {"full"}
    assert [s.run_id for s in expand_all(["early_exit_grid"], "full")] == EXPECTED_IDS[16:23]


def test_full_adaptive_values(full):
    for w, (requests, tokens, temperature, draft) in ADAPTIVE_WORKLOADS.items():
        for a in (0, 1):
            s = full[f"run{w}_r{requests}_t{tokens}_temp{temperature}_d{draft}_adaptive{a}"]
            assert (s.workload_number, s.num_requests, s.max_new_tokens, s.temperature, s.num_speculative_tokens,
                    s.adaptive_draft_length) == (w, requests, tokens, temperature, draft, bool(a))
            assert s.measured_batches == 10 and s.confidence_threshold == 0.0 and not s.ncu


def test_full_run3_adaptive1(full):
    s = full["run3_r36_t128_temp0.0_d10_adaptive1"]
    assert s.num_requests == 36
    assert s.max_new_tokens == 128
    assert s.measured_batches == 10
    assert (s.warmup_batches, s.warmup_max_batches, s.warmup_window, s.warmup_tolerance) == (10, 30, 3, 0.1)
    assert s.engine_instances == 3
    assert s.arms == ({"name": "baseline", "adaptive_draft_length": False},)
    assert s.top_p == 0.9
    assert s.max_model_len == 4096
    assert s.tensor_parallel_size == 2
    assert s.target_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.draft_model == "yuhuili/EAGLE-LLaMA3.1-Instruct-8B"
    assert s.method == "eagle"
    assert s.adaptive_draft_length is True
    assert s.prompt_set == "hf:OpenAssistant/oasst1"
    assert s.gpu_memory_utilization == 0.9
    assert s.ignore_eos is False


def test_full_early_exit_values(full):
    for n, (tokens, temperature, threshold) in EARLY_EXIT_WORKLOADS.items():
        s = full[f"run{n}_r36_t{tokens}_temp{temperature}_thresh{threshold}"]
        assert s.workload_number == n
        assert (s.max_new_tokens, s.temperature, s.confidence_threshold) == (tokens, temperature, threshold)
        assert s.ncu is True
        assert s.ncu_metrics == NCU_METRICS
        assert s.measured_batches == 5
        assert s.num_requests == 36 and s.num_speculative_tokens == 10 and not s.adaptive_draft_length


def test_full_scenarios(full):
    c = full["scenario_c_high_throughput"]
    assert c.ncu is True and c.confidence_threshold == 0.5 and c.num_requests == 60
    assert c.measured_batches == 5 and c.adaptive_draft_length is True
    assert full["scenario_a_code_completion"].prompt_set == "hf:bigcode/bigcodebench"
    assert full["scenario_d_creative_writing"].prompt_set == "hf:euclaise/writingprompts"
    assert full["scenario_b_chatbot"].temperature == 0.3
    for rid in ("scenario_a_code_completion", "scenario_b_chatbot", "scenario_d_creative_writing"):
        assert full[rid].ncu is False
        assert full[rid].ncu_metrics == DEFAULT_NCU_METRICS


def test_adaptive_pairs_share_workload_number(full):
    adaptive0 = [rid for rid in full if rid.endswith("_adaptive0")]
    assert len(adaptive0) == 8
    for rid in adaptive0:
        partner = rid.replace("_adaptive0", "_adaptive1")
        assert partner in full
        assert full[partner].workload_number == full[rid].workload_number
        assert full[partner].adaptive_draft_length and not full[rid].adaptive_draft_length
        assert full[partner].params_hash() != full[rid].params_hash()


def test_smoke_scaling(full, smoke):
    for rid, f in full.items():
        s = smoke[rid]
        assert s.num_requests == math.ceil(f.num_requests * 0.25), rid
        assert s.max_new_tokens == math.ceil(f.max_new_tokens * 0.25), rid
        assert s.measured_batches == min(f.measured_batches, 3), rid
        assert s.measured_batches <= 3
        assert (s.warmup_batches, s.warmup_max_batches, s.warmup_window, s.warmup_tolerance) == (2, 6, 2, 0.25)
        assert s.engine_instances == (2 if s.grid == "calibration_grid" and rid.startswith("aa_") else 1), rid
        assert s.arms == f.arms, rid
        assert s.prompt_set.startswith("builtin:"), rid
        assert (s.target_model, s.draft_model, s.tensor_parallel_size, s.max_model_len) == ("tiny", "tiny-eagle", 1, 512)
        assert s.ignore_eos is True
        # what the grid says stays the same
        assert (s.temperature, s.confidence_threshold, s.adaptive_draft_length, s.num_speculative_tokens,
                s.ncu, s.workload_number) == (f.temperature, f.confidence_threshold, f.adaptive_draft_length,
                                              f.num_speculative_tokens, f.ncu, f.workload_number)
    assert smoke["run3_r36_t128_temp0.0_d10_adaptive1"].num_requests == 9
    assert smoke["run5_r60_t64_temp0.0_d10_adaptive0"].num_requests == 15
    assert smoke["run6_r36_t256_temp0.0_d10_adaptive0"].max_new_tokens == 64


def test_smoke_prompt_sets(smoke):
    assert smoke["scenario_a_code_completion"].prompt_set == "builtin:code"
    assert smoke["scenario_d_creative_writing"].prompt_set == "builtin:creative"
    assert smoke["scenario_b_chatbot"].prompt_set == "builtin:chat"
    assert smoke["run1_r36_t128_temp0.0_thresh0.0"].prompt_set == "builtin:chat"


def test_target_model_env_override(monkeypatch):
    monkeypatch.setenv("TARGET_MODEL", "org/other-target")
    monkeypatch.setenv("TENSOR_PARALLEL_SIZE", "4")
    specs = expand_all(["all"], "full")
    assert {s.target_model for s in specs} == {"org/other-target"}
    assert {s.tensor_parallel_size for s in specs} == {4}
    assert [s.run_id for s in specs] == ALL_IDS


def test_explicit_overrides_win(monkeypatch):
    monkeypatch.setenv("TARGET_MODEL", "org/from-env")
    specs = expand("adaptive_grid", load_profile("full"), overrides={"target_model": "org/from-cli"})
    assert {s.target_model for s in specs} == {"org/from-cli"}


def test_unknown_grid():
    with pytest.raises(ConfigError, match=r"unknown grid 'bogus'"):
        expand_all(["bogus"], "full")
    with pytest.raises(ConfigError, match=r"unknown grid"):
        load_grid("defaults")


def test_unknown_profile():
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'"):
        expand_all(["all"], "nope")


@pytest.fixture
def params(tmp_path):
    dest = tmp_path / "parameters"
    shutil.copytree(PARAMETERS_DIR, dest)
    return dest


def test_copy_of_parameters_expands(params):
    assert [s.run_id for s in expand_all(["all"], "full", parameters_dir=params)] == ALL_IDS


def test_malformed_yaml(params):
    path = params / "adaptive_grid.yaml"
    path.write_text(path.read_text() + "\nworkloads: [ {workload_number: 9, \n")
    with pytest.raises(ConfigError, match="malformed YAML") as info:
        expand_all(["all"], "full", parameters_dir=params)
    assert "adaptive_grid.yaml" in str(info.value)


def test_malformed_profiles_yaml(params):
    (params / "profiles.yaml").write_text("full: {set: [unclosed\n")
    with pytest.raises(ConfigError, match=r"profiles\.yaml.*malformed YAML"):
        expand_all(["all"], "full", parameters_dir=params)


def test_unknown_top_level_key(params):
    path = params / "early_exit_grid.yaml"
    path.write_text(path.read_text() + "\nbogus_key: 1\n")
    with pytest.raises(ConfigError) as info:
        expand_all(["early_exit_grid"], "full", parameters_dir=params)
    assert "early_exit_grid.yaml" in str(info.value) and "'bogus_key'" in str(info.value)


def test_unknown_key_in_workload(params):
    path = params / "adaptive_grid.yaml"
    text = path.read_text()
    assert "{workload_number: 3," in text
    path.write_text(text.replace("{workload_number: 3,", "{workload_number: 3, num_reqeusts: 5,"))
    with pytest.raises(ConfigError) as info:
        expand_all(["adaptive_grid"], "full", parameters_dir=params)
    message = str(info.value)
    assert "adaptive_grid.yaml" in message and "workloads[2]" in message and "'num_reqeusts'" in message


def test_unknown_key_in_defaults(params):
    path = params / "defaults.yaml"
    path.write_text(path.read_text() + "\ntempreature: 0.5\n")
    with pytest.raises(ConfigError, match=r"defaults\.yaml.*'tempreature'"):
        expand_all(["all"], "full", parameters_dir=params)


def test_out_of_range_value_names_run_and_field(params):
    path = params / "adaptive_grid.yaml"
    text = path.read_text()
    path.write_text(text.replace("{workload_number: 3,", "{workload_number: 3, top_p: 1.5,"))
    with pytest.raises(ConfigError) as info:
        expand_all(["adaptive_grid"], "full", parameters_dir=params)
    message = str(info.value)
    assert "run3_r36_t128_temp0.0_d10_adaptive0" in message
    assert "top_p" in message and "1.5" in message


def test_grids_constant():
    assert GRIDS == ("adaptive_grid", "early_exit_grid", "oneoff_scenarios", "calibration_grid")


@pytest.mark.parametrize("profile", ["full", "gpu-smoke"])
def test_gpu_profiles_replicate_and_warm_up_at_least_as_vllm_bench(profile):
    # `vllm bench latency` warms up with 10 batches (--num-iters-warmup); the issue asks for >= 3 engines.
    for s in _expanded(profile).values():
        assert s.warmup_batches >= 10 and s.warmup_max_batches >= s.warmup_batches, s.run_id
        assert s.engine_instances >= 3, s.run_id


def test_every_run_with_a_feature_on_has_a_features_off_baseline(full):
    for rid, s in full.items():
        if s.grid == "calibration_grid":
            continue
        on = s.adaptive_draft_length or s.confidence_threshold > 0
        if not on:
            assert s.arms == (), rid
            continue
        (arm,) = s.arms
        assert arm["name"] == "baseline", rid
        assert arm.get("adaptive_draft_length", s.adaptive_draft_length) is False, rid
        assert arm.get("confidence_threshold", s.confidence_threshold) == 0.0, rid
        assert set(arm) <= {"name", "adaptive_draft_length", "confidence_threshold"}, rid


def test_calibration_runs(full, smoke):
    within, engines, overhead = (smoke[r] for r in CALIBRATION_IDS)
    assert within.arms == ({"name": "baseline", "load_plugin": True},) and within.arm_design == "auto"
    assert engines.arms == ({"name": "baseline"},) and engines.arm_design == "engines"
    for s in (within, engines):
        assert (s.adaptive_draft_length, s.confidence_threshold, s.num_speculative_tokens) == (False, 0.0, 10)
        assert (s.num_requests, s.max_new_tokens, s.temperature) == (9, 32, 0.0)  # W3 at smoke scale
    assert [a["name"] for a in overhead.arms] == ["stock", "plugin_off", "gate"]
    assert overhead.confidence_threshold == 0.5 and not overhead.ncu
    ee1 = full["run1_r36_t128_temp0.0_thresh0.0"]
    o = full[CALIBRATION_IDS[2]]
    assert (o.num_requests, o.max_new_tokens, o.temperature, o.num_speculative_tokens) == (
        ee1.num_requests, ee1.max_new_tokens, ee1.temperature, ee1.num_speculative_tokens)


def test_unknown_baseline_kind(params):
    path = params / "adaptive_grid.yaml"
    path.write_text(path.read_text().replace("baseline: features_off", "baseline: features_of"))
    with pytest.raises(ConfigError, match="baseline must be one of features_off"):
        expand_all(["adaptive_grid"], "full", parameters_dir=params)
