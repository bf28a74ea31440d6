"""Tests for nwor.metrics: counter arithmetic, the speculative-decoding formulas on a hand-computed case,
percentiles against numpy, and per-request timings from a stand-in for vLLM's RequestStateStats."""
from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from nwor.metrics import PERCENTILES, SPEC_PREFIX, describe, diff, percentile, request_timings, snapshot, \
    spec_decode_metrics

P = SPEC_PREFIX


def test_diff_counters_and_vectors():
    before = {P + "num_drafts": 5, P + "num_accepted_tokens_per_pos": [1, 2, 3], "gone": 9}
    after = {P + "num_drafts": 15, P + "num_accepted_tokens_per_pos": [4, 4, 4], "new": 7}
    assert diff(before, after) == {P + "num_drafts": 10, P + "num_accepted_tokens_per_pos": [3, 2, 1], "new": 7}


def test_diff_vector_missing_or_shorter_before():
    assert diff({}, {"v": [1, 2]}) == {"v": [1, 2]}
    assert diff({"v": [1]}, {"v": [5, 6, 7]}) == {"v": [4, 6, 7]}


def test_snapshot_sums_label_sets():
    class Llm:
        def get_metrics(self):
            return [SimpleNamespace(name="c", value=2), SimpleNamespace(name="c", value=3),
                    SimpleNamespace(name="v", values=[1, 2]), SimpleNamespace(name="v", values=[10, 20])]

    assert snapshot(Llm()) == {"c": 5, "v": [11, 22]}


def test_spec_decode_hand_case():
    delta = {P + "num_drafts": 10, P + "num_draft_tokens": 40, P + "num_accepted_tokens": 20,
             P + "num_accepted_tokens_per_pos": [8, 6, 4, 2]}
    m = spec_decode_metrics(delta)
    assert m["num_drafts"] == 10 and m["num_draft_tokens"] == 40 and m["num_accepted_tokens"] == 20
    assert m["draft_acceptance_rate"] == pytest.approx(0.5, abs=1e-12)
    assert m["mean_acceptance_length"] == pytest.approx(3.0, abs=1e-12)
    assert m["mean_accepted_per_draft"] == pytest.approx(2.0, abs=1e-12)
    assert m["acceptance_rate_per_pos"] == pytest.approx([0.8, 0.6, 0.4, 0.2], abs=1e-12)
    assert m["num_accepted_tokens_per_pos"] == [8, 6, 4, 2]


@pytest.mark.parametrize("drafts", [0, None])
def test_spec_decode_nothing_drafted_is_null(drafts):
    delta = {P + "num_draft_tokens": 0, P + "num_accepted_tokens": 0, P + "num_accepted_tokens_per_pos": [0, 0]}
    if drafts is not None:
        delta[P + "num_drafts"] = drafts
    m = spec_decode_metrics(delta)
    for key in ("draft_acceptance_rate", "mean_acceptance_length", "mean_accepted_per_draft",
                "acceptance_rate_per_pos"):
        assert m[key] is None, key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentile_matches_numpy(seed):
    rng = random.Random(seed)
    data = [rng.uniform(0, 10) for _ in range(rng.randint(1, 200))]
    for q in (0, 10, 25, 50, 75, 90, 95, 99, 100, 33.3):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12, abs=1e-12)


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([None, None], 50) is None
    assert percentile([None, 3.0, 1.0], 50) == pytest.approx(2.0, abs=1e-12)
    assert percentile([4.0], 99) == 4.0


def test_describe_keys_and_values():
    out = describe([1.0, 2.0, 3.0, None, 4.0], "ttft")
    assert list(out) == ["mean_ttft_s"] + [f"p{q}_ttft_s" for q in PERCENTILES]
    assert PERCENTILES == (10, 25, 50, 75, 90, 95, 99)
    assert out["mean_ttft_s"] == pytest.approx(2.5, abs=1e-12)
    assert out["p50_ttft_s"] == pytest.approx(2.5, abs=1e-12)
    assert out["p90_ttft_s"] == pytest.approx(float(np.percentile([1, 2, 3, 4], 90)), abs=1e-12)


def test_describe_empty_and_unit():
    out = describe([], "latency", unit="ms")
    assert set(out) == {"mean_latency_ms"} | {f"p{q}_latency_ms" for q in PERCENTILES}
    assert all(v is None for v in out.values())


def _stats(**kw):
    base = dict(first_token_latency=0.25, num_generation_tokens=11, first_token_ts=100.0, last_token_ts=102.0,
                queued_ts=99.5, scheduled_ts=99.75, is_corrupted=False)
    base.update(kw)
    return SimpleNamespace(metrics=SimpleNamespace(**base))


def test_request_timings_hand_case():
    t = request_timings(_stats())
    assert t["ttft_s"] == pytest.approx(0.25, abs=1e-12)
    assert t["tpot_s"] == pytest.approx(2.0 / 10, abs=1e-12)  # 10 intervals between 11 tokens
    assert t["e2e_s"] == pytest.approx(2.25, abs=1e-12)
    assert t["queue_s"] == pytest.approx(0.25, abs=1e-12)
    assert t["is_corrupted"] is False


def test_request_timings_single_token():
    t = request_timings(_stats(num_generation_tokens=1, last_token_ts=100.0))
    assert t["tpot_s"] is None
    assert t["ttft_s"] == pytest.approx(0.25, abs=1e-12)


def test_request_timings_missing_timestamps():
    t = request_timings(_stats(first_token_ts=0.0, queued_ts=0.0))
    assert t["tpot_s"] is None and t["e2e_s"] is None and t["queue_s"] is None


def test_request_timings_without_metrics():
    expected = {"ttft_s": None, "tpot_s": None, "e2e_s": None, "queue_s": None, "is_corrupted": None}
    assert request_timings(SimpleNamespace(metrics=None)) == expected
    assert request_timings(SimpleNamespace()) == expected
