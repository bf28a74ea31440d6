"""One run's measurement: engine, warm-up, timed batches, counters, request timings → a result document.

Also a script entry point, so Nsight Compute can profile a run outside any notebook kernel:
`python -m nwor.bench --spec SPEC.json --out RESULT.json [--profile-region] [--log LOG]`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from nwor import metrics as m
from nwor import provenance
from nwor.config import RunSpec, resolve_models, spec_from_mapping
from nwor.engine import (effective_speculation, native_early_exit_from_log, quiet_streams, release_engine,
                         route_vllm_logs, start_engine)
from nwor.errors import NworError
from nwor.features import ADAPTIVE, EARLY_EXIT, detect_capability, plan_features
from nwor.prompts import batch_prompts, prompts_for
from nwor.results import envelope, seed_summary


def output_hash(token_ids) -> str:
    """Identity of one generated sequence: equal hashes ⇔ equal token ids."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()[:16]


def _sampling_params(spec: RunSpec):
    from vllm import SamplingParams

    return SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens,
                          ignore_eos=spec.ignore_eos)


def warm_up(llm, spec: RunSpec, prompts: list[str]) -> None:
    """The spec's untimed batches, on the prompts that precede the measured ones."""
    params = _sampling_params(spec)
    for w in range(spec.warmup_batches):
        llm.generate(batch_prompts(prompts, w, spec.num_requests), params, use_tqdm=False)


def _run_batches(llm, spec: RunSpec, prompts: list[str], *, on_batch=None) -> tuple[list, list]:
    """Time each measured batch (a synchronous generate); return batch rows and request rows."""
    params = _sampling_params(spec)
    batches, requests = [], []
    for b in range(spec.measured_batches):
        batch = batch_prompts(prompts, spec.warmup_batches + b, spec.num_requests)
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        latency = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        hashes = [output_hash(o.outputs[0].token_ids) for o in outputs]
        batches.append({"batch": b, "latency_s": latency, "num_requests": len(batch), "num_output_tokens": tokens,
                        "output_tokens_per_s": tokens / latency,
                        "sampling_params": {"temperature": spec.temperature, "top_p": spec.top_p,
                                            "max_tokens": spec.max_new_tokens, "ignore_eos": spec.ignore_eos},
                        "outputs": [o.outputs[0].text for o in outputs], "output_hashes": hashes})
        for i, out in enumerate(outputs):
            requests.append({"batch": b, "index": i, "num_prompt_tokens": len(out.prompt_token_ids or []),
                             "num_output_tokens": len(out.outputs[0].token_ids), "output_hash": hashes[i],
                             **m.request_timings(out)})
        if on_batch:
            on_batch(b, latency)
    return batches, requests


def _summarise(spec: RunSpec, batches: list, requests: list, counters: dict) -> dict:
    latencies = [b["latency_s"] for b in batches]
    total_tokens = sum(b["num_output_tokens"] for b in batches)
    out = m.describe(latencies, "latency")
    out["output_tokens_per_s"] = total_tokens / sum(latencies) if latencies else None
    for name in ("ttft", "tpot", "e2e", "queue"):
        out.update(m.describe([r[f"{name}_s"] for r in requests], name))
    out["num_corrupted_requests"] = sum(1 for r in requests if r.get("is_corrupted"))
    out.update(m.spec_decode_metrics(counters) if spec.speculative else m.spec_decode_metrics({}))
    return out


def _feature_stats(llm, plan, log_path) -> tuple[dict, dict]:
    """Early-exit counters and the chosen draft-length histogram over the measured batches."""
    unavailable = {"status": "unavailable", "tokens_stopped": None, "checks": None, "stop_pct": None}
    if plan.uses_plugin:
        from nwor import plugin

        stats = plugin.read_stats(llm)
        early = {"status": "ok", "source": plan.feature_impl, "tokens_stopped": stats["tokens_stopped"],
                 "checks": stats["checks"], "stop_pct": stats["stop_pct"], "reason": None}
        lengths = {"status": "ok", "histogram": {str(k): v for k, v in sorted(stats["draft_length_histogram"].items())},
                   "steps": stats.get("steps")}
        return early, lengths
    if plan.impl[EARLY_EXIT] == "native":
        parsed = native_early_exit_from_log(log_path) if log_path else None
        if parsed:
            # The fork's counters are cumulative since engine start (warm-up included): labelled so.
            return ({"status": "ok", "source": "native-log", "window": "engine lifetime", **parsed, "reason": None},
                    {"status": "unavailable", "histogram": None, "reason": "the fork does not expose chosen lengths"})
        unavailable["reason"] = "the fork logged no early-exit stats line"
    elif plan.impl[EARLY_EXIT] == "off" and plan.impl[ADAPTIVE] == "off":
        unavailable["reason"] = "features off for this run"
    else:
        unavailable["reason"] = "no early-exit instrumentation for this implementation"
    return unavailable, {"status": "unavailable", "histogram": None, "reason": unavailable["reason"]}


def measure(spec: RunSpec, *, log_path: str | Path | None = None, profile_region: bool = False,
            on_batch=None) -> dict:
    """Run one experiment and return its result document (status ok); never writes files.

    Raises:
        FeatureUnavailable: the run asks for a feature this vLLM build cannot provide (before any engine).
        ConfigError: prompts or models cannot be resolved.
    """
    if not log_path:
        return _measure(spec, None, profile_region, on_batch)
    route_vllm_logs(log_path)
    with quiet_streams(log_path):
        return _measure(spec, log_path, profile_region, on_batch)


def _measure(spec: RunSpec, log_path, profile_region: bool, on_batch) -> dict:
    started = provenance.utc_now()
    cap = detect_capability()
    plan = plan_features(spec, cap)
    models = resolve_models(spec)
    prompts = prompts_for(spec)
    t0 = time.perf_counter()
    llm = start_engine(spec, models, plan, profile_region=profile_region)
    engine_start_s = time.perf_counter() - t0
    try:
        effective = effective_speculation(llm, plan)
        warm_up(llm, spec, prompts)
        if plan.uses_plugin:
            from nwor import plugin

            plugin.reset_stats(llm)  # counters cover the measured batches only
        before = m.snapshot(llm)
        if profile_region:
            llm.start_profile()
        batches, requests = _run_batches(llm, spec, prompts, on_batch=on_batch)
        if profile_region:
            llm.stop_profile()
        counters = m.diff(before, m.snapshot(llm))
        early_exit, draft_lengths = _feature_stats(llm, plan, log_path)
        gpu_memory_used = provenance.gpu_memory_used_bytes()
    finally:
        release_engine(llm)
    metrics = {**_summarise(spec, batches, requests, counters), "gpu_memory_used_bytes": gpu_memory_used}
    return envelope(
        spec, "ok", started_utc=started, finished_utc=provenance.utc_now(), engine_start_s=engine_start_s,
        models={k: provenance.display_path(v) for k, v in models.items()}, env=provenance.collect(),
        features={"capability": cap.to_dict(), "requested": {"adaptive_draft_length": spec.adaptive_draft_length,
                  "confidence_threshold": spec.confidence_threshold}, **plan.to_dict(), "effective": effective},
        results=batches, requests=requests, metrics=metrics, counters=counters, early_exit=early_exit,
        draft_lengths=draft_lengths, profiled_region=profile_region,
        ncu={"status": "off", "reason": "ncu not requested for this run"},
        summary=seed_summary(spec, metrics, None),
    )


def main(argv: list[str] | None = None) -> int:
    """Script entry point (used under ncu): read a spec JSON, measure, write the result JSON."""
    from nwor.results import write_result

    parser = argparse.ArgumentParser(prog="python -m nwor.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="a RunSpec as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    parser.add_argument("--log", help="file for vLLM's logs")
    parser.add_argument("--profile-region", action="store_true",
                        help="wrap the measured batches in cudaProfilerStart/Stop (vLLM's profiler hooks)")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_mapping(json.loads(Path(args.spec).read_text()), source=args.spec)
        doc = measure(spec, log_path=args.log, profile_region=args.profile_region)
    except NworError as err:
        print(f"nwor: error: {err}", file=sys.stderr)
        return 2
    write_result(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
