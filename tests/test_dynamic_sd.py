"""nwor.dynamic_sd: vLLM's tuner rule on synthetic sweep numbers, and resolving a "tuned" schedule."""
from __future__ import annotations

import json

import pytest

from nwor import dynamic_sd as d
from nwor.config import RunSpec
from nwor.errors import ConfigError


def _records(table: dict[tuple[int, int], list[float]]) -> list[dict]:
    return [{"batch_size": b, "k": k, "objective": v} for (b, k), values in table.items() for v in values]


def test_aggregate_takes_median_minus_scaled_mad():
    (m,) = d.aggregate(_records({(9, 3): [100.0, 110.0, 90.0]}))
    assert m["median_objective"] == 100.0 and m["mad_objective"] == 10.0
    assert m["conservative_objective"] == pytest.approx(100.0 - 1.4826 * 10.0, abs=1e-9)
    assert m["unstable"] is False  # relative MAD 0.10 is at vLLM's limit, not above it


def test_aggregate_flags_unstable_and_refuses_too_few_runs():
    (m,) = d.aggregate(_records({(9, 3): [100.0, 200.0]}))
    assert m["unstable"] is True
    with pytest.raises(ValueError, match="at least 2"):
        d.aggregate(_records({(9, 3): [100.0]}))
    with pytest.raises(ValueError, match="> 0"):
        d.aggregate(_records({(9, 3): [0.0, 1.0]}))


def test_select_k_takes_the_smallest_k_within_tolerance_of_the_best():
    table = {(9, 1): [50.0, 50.0], (9, 3): [100.0, 100.0], (9, 5): [100.5, 100.5], (9, 8): [80.0, 80.0],
             (15, 1): [90.0, 90.0], (15, 3): [70.0, 70.0], (15, 5): [60.0, 60.0], (15, 8): [40.0, 40.0]}
    chosen = d.select_k(d.aggregate(_records(table)))
    assert chosen == {9: 3, 15: 1}  # K=5 is 0.5 % better than K=3 at 9: within 1 %, so the smaller K


def test_select_k_falls_back_to_medians_only_when_asked_and_says_so():
    table = {(9, 1): [10.0, 100.0], (9, 3): [20.0, 300.0]}  # instances 10x apart: every conservative value is 0
    with pytest.raises(ValueError, match="no positive conservative"):
        d.select_k(d.aggregate(_records(table)))  # vLLM's rule
    fallbacks = []
    assert d.select_k(d.aggregate(_records(table)), fallbacks=fallbacks) == {9: 3} and fallbacks == [9]
    assert d.tune(_records(table), ["x"])["median_fallback_batch_sizes"] == [9]


def test_select_k_refuses_batch_sizes_with_different_candidates():
    with pytest.raises(ValueError, match="different K"):
        d.select_k(d.aggregate(_records({(9, 1): [1.0, 1.0], (15, 3): [1.0, 1.0]})))


def test_build_schedule_ranges_merge_and_cover_from_one():
    assert d.build_schedule({9: 3, 15: 1}) == [[1, 14, 3], [15, 15, 1]]
    assert d.build_schedule({9: 3, 15: 3}) == [[1, 15, 3]]
    assert d.build_schedule({1: 4, 8: 2, 32: 2}, 64) == [[1, 7, 4], [8, 64, 2]]
    with pytest.raises(ValueError):
        d.build_schedule({9: 3}, 4)


def _sweep_doc(run_id: str, num_requests: int, tokens_per_s: dict[str, list[float]]) -> dict:
    # One batch of 100 tokens per arm and instance, its latency set so that tokens/s is as given.
    arms = [{"name": "run"}, {"name": "nospec", "method": "none"}] + [
        {"name": name, "num_speculative_tokens": int(name[1:]), "adaptive_draft_length": False, "load_plugin": True}
        for name in tokens_per_s]
    replicates = [{"batches": [{"arm": name, "num_output_tokens": 100, "latency_s": 100 / values[i]}
                               for name, values in tokens_per_s.items()]} for i in range(2)]
    spec = {**RunSpec(num_requests=num_requests, adaptive_draft_length=True).to_dict(), "run_id": run_id}
    return {"run_id": run_id, "status": "ok", "spec": spec, "design": {"arms": arms}, "replicates": replicates}


def test_sweep_records_keep_static_arms_only():
    records = d.sweep_records(_sweep_doc("controls_a", 9, {"k1": [10.0, 12.0], "k3": [20.0, 22.0]}))
    assert sorted((r["k"], round(r["objective"], 6)) for r in records) == [(1, 10.0), (1, 12.0), (3, 20.0), (3, 22.0)]
    assert {r["batch_size"] for r in records} == {9}


def test_resolve_tuned_builds_the_schedule_from_sweeps_beside_the_run(tmp_path):
    (tmp_path / "controls_a.json").write_text(json.dumps(_sweep_doc("controls_a", 9, {"k1": [10, 10], "k3": [20, 20]})))
    (tmp_path / "controls_b.json").write_text(json.dumps(_sweep_doc("controls_b", 15, {"k1": [30, 30], "k3": [20, 20]})))
    spec = RunSpec(run_id="controls_a_dynamic_sd", arms=(
        {"name": "dynamic_sd", "num_speculative_tokens_per_batch_size": "tuned", "num_speculative_tokens": 15},))
    resolved, tuning = d.resolve_tuned(spec, tmp_path)
    assert tuning["schedule"] == [[1, 14, 3], [15, 15, 1]] and tuning["sources"] == ["controls_a", "controls_b"]
    assert tuning["extended_below"] is True
    arm = resolved.arms[0]
    assert arm["num_speculative_tokens_per_batch_size"] == ((1, 14, 3), (15, 15, 1))
    assert arm["num_speculative_tokens"] == 3  # vLLM caps the schedule at num_speculative_tokens: its largest K
    assert d.resolve_tuned(RunSpec(), tmp_path) == (RunSpec(), None)


def test_resolve_tuned_refuses_without_a_sweep(tmp_path):
    spec = RunSpec(run_id="x", num_speculative_tokens_per_batch_size="tuned")
    with pytest.raises(ConfigError, match="no static-K sweep"):
        d.resolve_tuned(spec, tmp_path)


def test_runspec_validates_the_schedule_like_vllm():
    RunSpec(num_speculative_tokens_per_batch_size=[[1, 8, 3], [9, 64, 1]])
    for bad in ([[2, 8, 3]], [[1, 8, 3], [8, 9, 1]], [[1, 8]], "auto", []):
        with pytest.raises(ConfigError, match="num_speculative_tokens_per_batch_size"):
            RunSpec(num_speculative_tokens_per_batch_size=bad)
    with pytest.raises(ConfigError):
        RunSpec(method="none", draft_model=None, num_speculative_tokens_per_batch_size="tuned")
