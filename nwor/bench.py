"""One run's measurement: warm-up, timed batches, counters, request timings → a result document.

The engine instances and arms are run by nwor.instances; this module times batches and summarises.

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
from nwor import plugin_ranks, provenance
from nwor.config import RunSpec, spec_from_mapping
from nwor.design import RUN_ARM, WarmupRule
from nwor.engine import process_ends_after_run, quiet_streams, route_vllm_logs, skip_ray_import
from nwor.errors import NworError
from nwor.features import detect_capability, plan_features
from nwor.models import resolve_models
from nwor.prompts import batch_prompts
from nwor.results import envelope, seed_summary


def output_hash(token_ids) -> str:
    """Identity of one generated sequence: equal hashes ⇔ equal token ids."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()[:16]


def _sampling_params(spec: RunSpec):
    from vllm import SamplingParams

    return SamplingParams(temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_new_tokens,
                          ignore_eos=spec.ignore_eos)


def warmup_prompt_index(spec: RunSpec, w: int) -> int:
    """Prompt batch of warm-up batch `w`: the first `warmup_batches` precede the measured prompts
    (`warmup_batches + round`); any further ones come after them, so measured prompts never move."""
    return w if w < spec.warmup_batches else spec.measured_batches + w


def _timed_batch(llm, spec: RunSpec, prompts: list[str], prompt_index: int, batch: int) -> tuple[dict, list]:
    """One synchronous generate, timed; the seed's batch row and the request rows."""
    params = _sampling_params(spec)
    prompts_now = batch_prompts(prompts, prompt_index, spec.num_requests)
    start = time.perf_counter()
    outputs = llm.generate(prompts_now, params, use_tqdm=False)
    latency = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    hashes = [output_hash(o.outputs[0].token_ids) for o in outputs]
    row = {"batch": batch, "latency_s": latency, "num_requests": len(prompts_now), "num_output_tokens": tokens,
           "output_tokens_per_s": tokens / latency,
           "sampling_params": {"temperature": spec.temperature, "top_p": spec.top_p,
                               "max_tokens": spec.max_new_tokens, "ignore_eos": spec.ignore_eos},
           "outputs": [o.outputs[0].text for o in outputs], "output_hashes": hashes}
    requests = [{"batch": batch, "index": i, "num_prompt_tokens": len(out.prompt_token_ids or []),
                 "num_output_tokens": len(out.outputs[0].token_ids), "output_hash": hashes[i],
                 **m.request_timings(out)} for i, out in enumerate(outputs)]
    return row, requests


def warm_up(llm, spec: RunSpec, prompts: list[str]) -> dict:
    """Untimed batches of one arm until the spec's warm-up rule says stable (or its cap); the warm-up record."""
    return _warm_up(llm, spec, [RUN_ARM], {RUN_ARM: (spec, prompts)}, None)


def _warm_up(llm, spec: RunSpec, names: list[str], arms: dict, configure) -> dict:
    """Rotate the instance's arms batch by batch until `WarmupRule.verdict` ends the warm-up."""
    rule = WarmupRule.of(spec)
    series, series_arms = [], []
    ended_by = rule.verdict(series, series_arms)
    while ended_by is None:
        name = names[len(series) % len(names)]
        arm_spec, prompts = arms[name]
        if configure:
            configure(arm_spec)
        start = time.perf_counter()
        llm.generate(batch_prompts(prompts, warmup_prompt_index(spec, len(series)), arm_spec.num_requests),
                     _sampling_params(arm_spec), use_tqdm=False)
        series.append(time.perf_counter() - start)
        series_arms.append(name)
        ended_by = rule.verdict(series, series_arms)
    return {"rule": rule.to_dict(), "series_s": series, "series_arms": series_arms, "batches": len(series),
            "ended_by": ended_by}


def _run_batches(llm, spec: RunSpec, prompts: list[str], *, on_batch=None) -> tuple[list, list]:
    """The spec's measured batches of one arm, no reconfiguration (scripts/bench_overhead.py's loop)."""
    batches, requests = [], []
    for b in range(spec.measured_batches):
        row, reqs = _timed_batch(llm, spec, prompts, spec.warmup_batches + b, b)
        batches.append(row)
        requests.extend(reqs)
        if on_batch:
            on_batch(b, row["latency_s"])
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


def measure(spec: RunSpec, *, log_path: str | Path | None = None, profile_region: bool = False,
            on_batch=None) -> dict:
    """Run one experiment (every arm, every engine instance) and return its result document; never writes files.

    Raises:
        FeatureUnavailable: an arm asks for a feature this vLLM build cannot provide (before any engine).
        ConfigError: prompts, models or arms cannot be resolved.
    """
    if not log_path:
        return _measure(spec, None, profile_region, on_batch)
    route_vllm_logs(log_path)
    with quiet_streams(log_path):
        return _measure(spec, log_path, profile_region, on_batch)


def _measure(spec: RunSpec, log_path, profile_region: bool, on_batch) -> dict:
    from nwor.dynamic_sd import resolve_tuned
    from nwor.instances import collect_arm, plan_design, public, run_instances

    started = provenance.utc_now()
    if spec.engine_in_process and process_ends_after_run():
        skip_ray_import()  # a run kernel's in-process engine never uses Ray; before detect_capability imports vLLM
    cap = detect_capability()
    plan_features(spec, cap)  # refuses before any engine starts (e.g. Dynamic SD on a build without it)
    # A "tuned" Dynamic SD schedule comes from the static-K sweep results beside this run's (the result keeps
    # the spec as planned, so resuming compares like with like, and the schedule under `dynamic_sd`).
    measured, dynamic_sd = resolve_tuned(spec, Path(log_path).parent if log_path else None)
    plan = plan_features(measured, cap)
    design = plan_design(measured, cap)
    replicates = run_instances(measured, design, profile_region=profile_region, on_batch=on_batch)
    run = collect_arm(replicates, RUN_ARM)
    counters = run["counters"]
    metrics = {**_summarise(spec, run["results"], run["requests"], counters),
               "gpu_memory_used_bytes": run["gpu_memory_used_bytes"]}
    early_exit, draft_lengths = plan.feature_stats(run["plugin_stats"], log_path)
    models = resolve_models(spec)
    return envelope(
        spec, "ok", started_utc=started, finished_utc=provenance.utc_now(),
        engine_start_s=run["engine_start_s"],
        models={k: provenance.display_path(v) for k, v in models.items()}, env=provenance.collect(),
        features={"capability": cap.to_dict(), "requested": {"adaptive_draft_length": spec.adaptive_draft_length,
                  "confidence_threshold": spec.confidence_threshold}, **plan.to_dict(),
                  "plugin_loaded": run["plugin_loaded"], "effective": run["effective"]},
        design=design.to_dict(), replicates=[public(r) for r in replicates],
        plugin_ranks=plugin_ranks.run_block(replicates),
        results=run["results"], requests=run["requests"], metrics=metrics, counters=counters,
        early_exit=early_exit, draft_lengths=draft_lengths, profiled_region=profile_region, dynamic_sd=dynamic_sd,
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
