"""nwor/bench.py without an engine: output identity, prompt placement of warm-up batches, the summary of
measured batches, and the script entry point's one-line refusal. The real measurement: test_engine_*.py."""
from __future__ import annotations

import json

import pytest

from nwor import bench
from nwor.config import RunSpec
from nwor.metrics import SPEC_PREFIX


def test_output_hash_is_equal_exactly_for_equal_token_ids():
    assert bench.output_hash([1, 2, 3]) == bench.output_hash((1, 2, 3))
    assert bench.output_hash([1, 2, 3]) != bench.output_hash([1, 23])  # the separator keeps ids apart
    assert len(bench.output_hash([])) == 16


def test_warmup_batches_never_take_the_measured_prompts():
    spec = RunSpec(warmup_batches=2, measured_batches=3)
    measured = {spec.warmup_batches + r for r in range(spec.measured_batches)}  # bench's prompt batches
    warm = [bench.warmup_prompt_index(spec, w) for w in range(6)]  # 2 planned + 4 more (the stability rule)
    assert warm == [0, 1, 5, 6, 7, 8]
    assert not measured & set(warm)


def _batch(latency_s, tokens):
    return {"latency_s": latency_s, "num_output_tokens": tokens}


def _request(value):
    return {f"{name}_s": value for name in ("ttft", "tpot", "e2e", "queue")}


def test_summary_of_measured_batches():
    spec = RunSpec(method="eagle")
    counters = {SPEC_PREFIX + "num_drafts": 10, SPEC_PREFIX + "num_draft_tokens": 40,
                SPEC_PREFIX + "num_accepted_tokens": 20, SPEC_PREFIX + "num_accepted_tokens_per_pos": [8, 6, 4, 2]}
    out = bench._summarise(spec, [_batch(1.0, 100), _batch(3.0, 300)],
                           [_request(0.1), {**_request(0.3), "is_corrupted": True}], counters)
    assert out["output_tokens_per_s"] == pytest.approx(100.0, rel=1e-12)  # 400 tokens / 4 s
    assert out["mean_latency_s"] == pytest.approx(2.0, rel=1e-12)
    assert out["num_corrupted_requests"] == 1
    assert out["num_drafts"] == 10 and out["draft_acceptance_rate"] == pytest.approx(0.5, rel=1e-12)
    assert out["mean_acceptance_length"] == pytest.approx(3.0, rel=1e-12)  # 1 + 20 / 10


def test_summary_without_speculation_has_null_draft_counters():
    out = bench._summarise(RunSpec(method="none"), [_batch(2.0, 10)], [], {SPEC_PREFIX + "num_drafts": 5})
    assert out["num_drafts"] is None and out["draft_acceptance_rate"] is None
    assert out["output_tokens_per_s"] == pytest.approx(5.0, rel=1e-12)


def test_script_refuses_a_bad_spec_in_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"num_requests": 0}))
    out = tmp_path / "r.json"
    assert bench.main(["--spec", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nwor: error: ") and err.count("\n") == 1 and "num_requests" in err
    assert not out.exists()  # no half-written artifact
