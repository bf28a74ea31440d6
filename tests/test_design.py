"""Tests for nwor.design (pure logic): arms, engine groups, balanced orders, the warm-up rule."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from nwor.config import RunSpec
from nwor.design import (WarmupRule, arms_of, balanced_rounds, design_name, design_seed, group_arms, instance_order,
                         relative_spread)
from nwor.errors import ConfigError


def test_balanced_rounds_are_permutation_then_reverse():
    rounds = balanced_rounds(["a", "b", "c"], 6, random.Random(3))
    for r in range(0, 6, 2):
        assert sorted(rounds[r]) == ["a", "b", "c"]
        assert rounds[r + 1] == rounds[r][::-1]
    # Over each pair of rounds every item's mean position is the same: no drift can favour one.
    positions = Counter()
    for r, rnd in enumerate(rounds):
        for k, item in enumerate(rnd):
            positions[item] += k
    assert len(set(positions.values())) == 1


def test_two_items_give_abba():
    flat = [x for rnd in balanced_rounds(["A", "B"], 4, random.Random(0)) for x in rnd]
    first, second = flat[0], flat[1]
    assert flat == [first, second, second, first, *flat[4:]]
    assert sorted(flat[4:6]) == ["A", "B"] and flat[6:] == flat[4:6][::-1]


def test_orders_are_seeded():
    a = balanced_rounds(list("abcd"), 5, random.Random(7))
    assert a == balanced_rounds(list("abcd"), 5, random.Random(7))
    assert {tuple(balanced_rounds(list("abcd"), 1, random.Random(s))[0]) for s in range(20)} != {tuple("abcd")}


def test_instance_order_interleaves_groups():
    order = instance_order([["run"], ["baseline"]], 3, random.Random(1))
    assert len(order) == 6 and Counter(order) == {0: 3, 1: 3}
    assert order[0:2] == order[2:4][::-1]  # ABBA over engine instances
    assert instance_order([["run", "baseline"]], 2, random.Random(1)) == [0, 0]


def test_design_seed_depends_on_run_and_seed():
    assert design_seed(RunSpec(run_id="a")) == design_seed(RunSpec(run_id="a"))
    assert design_seed(RunSpec(run_id="a")) != design_seed(RunSpec(run_id="b"))
    assert design_seed(RunSpec(run_id="a")) != design_seed(RunSpec(run_id="a", seed=1))


def _groups(spec: RunSpec, native=None) -> list[list[str]]:
    return group_arms(arms_of(spec), native or {}, spec.arm_design)


def test_plugin_only_differences_share_an_engine():
    spec = RunSpec(adaptive_draft_length=True, arms=[{"name": "baseline", "adaptive_draft_length": False}])
    assert _groups(spec) == [["run", "baseline"]]
    assert design_name(_groups(spec)) == "within-engine"
    thresholds = RunSpec(confidence_threshold=0.5, arms=[{"name": "baseline", "confidence_threshold": 0.0}])
    assert _groups(thresholds) == [["run", "baseline"]]


def test_engine_level_differences_get_their_own_engines():
    stock = RunSpec(confidence_threshold=0.5, arms=[{"name": "stock", "load_plugin": False, "confidence_threshold": 0.0},
                                                    {"name": "plugin_off", "load_plugin": True,
                                                     "confidence_threshold": 0.0},
                                                    {"name": "gate", "confidence_threshold": 1e-4}])
    assert _groups(stock) == [["run", "plugin_off", "gate"], ["stock"]]
    assert design_name(_groups(stock)) == "mixed"
    tokens = RunSpec(arms=[{"name": "k5", "num_speculative_tokens": 5}])
    assert _groups(tokens) == [["run"], ["k5"]]
    assert design_name(_groups(tokens)) == "engines-interleaved"


def test_native_switches_split_feature_arms():
    spec = RunSpec(adaptive_draft_length=True, arms=[{"name": "baseline", "adaptive_draft_length": False}])
    native = {"run": {"VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH": "1"}, "baseline": {"VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH": "0"}}
    assert _groups(spec, native) == [["run"], ["baseline"]]


def test_engines_design_forces_one_group_per_identical_arm():
    spec = RunSpec(arms=[{"name": "baseline"}], arm_design="engines")
    assert _groups(spec) == [["run"], ["baseline"]]
    assert design_name(_groups(RunSpec())) == "single-arm"


def test_stock_arm_with_a_feature_on_is_refused():
    with pytest.raises(ConfigError, match="load_plugin false with a feature on"):
        arms_of(RunSpec(arms=[{"name": "x", "load_plugin": False, "adaptive_draft_length": True}]))


@pytest.mark.parametrize(("arms", "needle"), [
    ([{"adaptive_draft_length": True}], "unique name"),
    ([{"name": "run"}], "unique name"),
    ([{"name": "a"}, {"name": "a"}], "unique name"),
    ([{"name": "a", "tempreature": 0.5}], "unknown key 'tempreature'"),
    ([{"name": "a", "measured_batches": 3}], "measured_batches is the run's"),
    ([{"name": "a", "top_p": 1.5}], "arm 'a': invalid top_p"),
    ([{"name": "a", "load_plugin": "yes"}], "load_plugin must be a bool"),
    (["baseline"], "each arm must be a mapping"),
])
def test_bad_arms_are_config_errors(arms, needle):
    with pytest.raises(ConfigError, match=needle):
        RunSpec(arms=arms)


def test_warmup_rule_stops_when_the_last_window_is_within_tolerance():
    rule = WarmupRule(min_batches=3, max_batches=10, window=3, tolerance=0.1)
    series = [1.6, 1.7, 1.0, 0.83, 0.82, 0.81]
    verdicts = [rule.verdict(series[:n], ["run"] * n) for n in range(len(series) + 1)]
    assert verdicts == [None, None, None, None, None, None, "stable"]


def test_warmup_rule_minimum_comes_first_and_cap_ends_it():
    rule = WarmupRule(min_batches=10, max_batches=12, window=3, tolerance=0.1)
    assert rule.verdict([1.0] * 9, ["run"] * 9) is None  # stable, but below the minimum (vllm bench's 10)
    assert rule.verdict([1.0] * 10, ["run"] * 10) == "stable"
    noisy = [1.0, 2.0] * 6
    assert rule.verdict(noisy[:11], ["run"] * 11) is None
    assert rule.verdict(noisy, ["run"] * 12) == "cap"


def test_warmup_rule_checks_every_arm_separately():
    rule = WarmupRule(min_batches=2, max_batches=20, window=2, tolerance=0.1)
    # The arms differ by 50 % (a real effect) but each is steady: stable.
    assert rule.verdict([1.0, 1.5, 1.0, 1.5], ["run", "b", "run", "b"]) == "stable"
    assert rule.verdict([1.0, 1.5, 1.0, 2.0], ["run", "b", "run", "b"]) is None
    assert rule.verdict([1.0, 1.5, 1.0], ["run", "b", "run"]) is None  # arm b has one batch < window


def test_warmup_rule_of_zero_batches():
    assert WarmupRule(0, 5, 2, 0.1).verdict([], []) == "stable"


def test_relative_spread():
    assert relative_spread([0.9, 1.0, 1.1]) == pytest.approx(0.2, abs=1e-12)
    assert relative_spread([0.0, 0.0]) == float("inf")


def test_warmup_rule_record_names_its_parameters():
    spec = RunSpec(warmup_batches=3, warmup_max_batches=7, warmup_window=2, warmup_tolerance=0.05)
    rule = WarmupRule.of(spec).to_dict()
    assert (rule["min_batches"], rule["max_batches"], rule["window"], rule["tolerance"]) == (3, 7, 2, 0.05)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("warmup_max_batches", 0, "integer >= 1"), ("warmup_window", 0, "integer >= 1"),
    ("warmup_tolerance", 0, "must be > 0"), ("engine_instances", 0, "integer >= 1"),
    ("arm_design", "abba", "must be one of auto, engines"),
])
def test_bad_design_fields(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        RunSpec(**{field: value})


def test_warmup_max_below_min_is_refused():
    with pytest.raises(ConfigError, match="warmup_max_batches"):
        RunSpec(warmup_batches=5, warmup_max_batches=4)


def test_plugin_fields_are_what_configure_can_change():
    from nwor.design import PLUGIN_FIELDS, plugin_config

    assert set(PLUGIN_FIELDS) == {"adaptive_draft_length", "confidence_threshold", "draft_length_options",
                                  "ewma_alpha"}
    cfg = plugin_config(RunSpec(adaptive_draft_length=True, confidence_threshold=0.3, draft_length_options=[2, 4]))
    assert (cfg.adaptive_draft_length, cfg.confidence_threshold, cfg.draft_length_options) == (True, 0.3, (2, 4))


def test_in_process_engines_only_where_arms_cannot_leak_into_each_other():
    from nwor.features import Capability
    from nwor.grid import expand_all
    from nwor.instances import plan_design

    stock = Capability("0.32.0", "cpu", "stock", plugin_supported=True)
    specs = {s.run_id: s for s in expand_all(["all"], "smoke")}
    adaptive = plan_design(specs["run3_r36_t128_temp0.0_d10_adaptive1"], stock)
    assert (adaptive.engine_process, adaptive.engine_process_note) == ("in-process", None)
    # Stock, then plugin-loaded engines: the plugin installs in the kernel before its engine starts.
    overhead = specs["overhead_run1_r36_t128_temp0.0_d10_thresh0.5"]
    design = plan_design(overhead, stock)
    assert [design.setups[i["group"]].plugin_loaded for i in design.instances] == [False, True]
    assert (design.engine_process, design.engine_process_note) == ("in-process", None)
    # A stock engine after a plugin-loaded one (ABBA over two engines each): the plugin's patches cannot be undone.
    design = plan_design(replace(overhead, engine_instances=2), stock)
    loaded = [design.setups[i["group"]].plugin_loaded for i in design.instances]
    assert sorted(loaded) == [False, False, True, True] and loaded != sorted(loaded)
    assert design.engine_process == "own" and "stock engine after a plugin-loaded" in design.engine_process_note
    assert design.to_dict()["engine_process"] == "own"
    fork = plan_design(specs["run3_r36_t128_temp0.0_d10_adaptive1"],
                       Capability("0.11.1", "cpu", "nwor-fork", plugin_supported=False,
                                  adaptive_env="VLLM_NWOR_ADAPTIVE_DRAFT_LENGTH"))
    assert fork.engine_process == "own" and "nwor-fork build" in fork.engine_process_note
