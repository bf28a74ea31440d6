"""One serving run: the run's arm and its baseline, each on its own `vllm serve` instances in ABBA order,
each instance swept over load; the result document in the replicate contract's shape.

The baseline arm is the run with both features off (adaptive draft length off, threshold 0.0); a run
whose own features are off is an A/A comparison. Plugin settings reach the engine only at start-up
(`NWOR_PLUGIN_CONFIG`), so every arm gets separate server instances.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from nwor import metrics as m
from nwor import provenance
from nwor.config import RunSpec, resolve_models
from nwor.errors import ConfigError
from nwor.features import detect_capability, plan_features
from nwor.load import concurrency_levels, requests_at, sweep
from nwor.prompts import prompts_for
from nwor.results import envelope, seed_summary
from nwor.serve import start_server, stop_server

RUN, BASELINE = "run", "baseline"


def arm_specs(spec: RunSpec) -> dict[str, RunSpec]:
    """The two arms: the run itself, and the same run with both features off."""
    baseline = dataclasses.replace(spec, adaptive_draft_length=False, confidence_threshold=0.0)
    return {RUN: spec, BASELINE: baseline}


def instance_order(instances_per_arm: int) -> list[str]:
    """ABBA over instances (baseline first): B R R B B R ...; drift then hits both arms alike."""
    order: list[str] = []
    for i in range(instances_per_arm):
        order += [BASELINE, RUN] if i % 2 == 0 else [RUN, BASELINE]
    return order


def artifacts_dir(result_path: str | Path) -> Path:
    """`<run_id>.serve/` next to the result JSON: server logs, client results, prompt files."""
    path = Path(result_path)
    return path.with_name(path.stem + ".serve")


def sum_counters(points: list[dict]) -> dict:
    """The counter deltas of several points added up (vectors element-wise)."""
    total: dict = {}
    for point in points:
        for name, value in point["counters"].items():
            if isinstance(value, list):
                old = total.get(name, [])
                width = max(len(old), len(value))
                total[name] = [a + b for a, b in zip(old + [0] * (width - len(old)),
                                                     value + [0] * (width - len(value)))]
            else:
                total[name] = total.get(name, 0) + value
    return total


def _display_arg(arg: str) -> str:
    """A command-line argument as results record it: no home folder (also inside JSON values)."""
    return provenance.display_path(arg) if arg.startswith("/") else arg.replace(str(Path.home()), "~")


def _arm_summary(points: list[dict]) -> dict:
    """An arm over all its instances' points: tokens/s over the whole sweep, spec-decode over all points."""
    duration = sum(p["duration_s"] or 0 for p in points)
    tokens = sum(p["num_output_tokens"] or 0 for p in points)
    counters = sum_counters(points)
    return {"output_tokens_per_s": tokens / duration if duration else None, "num_points": len(points),
            **m.spec_decode_metrics(counters)}, counters


def measure_serving(spec: RunSpec, *, result_path: str | Path, log_path: str | Path) -> dict:
    """Run the serving sweep of one run and return its result document (status ok); writes only artifacts.

    Raises:
        ConfigError: the spec is not a serving run, or prompts/models cannot be resolved.
        FeatureUnavailable: an arm asks for a feature this build cannot provide (before any server starts).
        ServerError: a server did not start, or a client failed (names the log to open).
    """
    if not spec.serving:
        raise ConfigError(f"run {spec.run_id}: serve_max_concurrency is not set, so this is not a serving run")
    started = provenance.utc_now()
    cap = detect_capability()
    arms = arm_specs(spec)
    plans = {name: plan_features(arm, cap) for name, arm in arms.items()}
    models = resolve_models(spec)
    prompts = prompts_for(spec)
    folder = artifacts_dir(result_path)
    folder.mkdir(parents=True, exist_ok=True)
    order = instance_order(spec.serve_instances)
    replicates = []
    for i, arm in enumerate(order):
        plan, prefix = plans[arm], f"instance{i}_{arm}"
        server = start_server(arms[arm], models, plan, folder / f"{prefix}.server.log")
        try:
            warmup, points = sweep(arms[arm], server, models["target_model"], prompts, folder, prefix,
                                   Path(log_path), plugin=plan.uses_plugin)
        finally:
            stop_server(server)
        replicates.append({
            "instance": i, "arms": [arm], "engine_start_s": server.start_s, "warmup": warmup,
            "batches": [{"arm": arm, "position": p["position"], "concurrency": p["concurrency"],
                         "latency_s": p["duration_s"], "num_output_tokens": p["num_output_tokens"],
                         "output_tokens_per_s": p["output_tokens_per_s"]} for p in points],
            "counters": {arm: sum_counters(points)}, "sweep": points,
            "server": {"argv": [_display_arg(a) for a in server.argv],
                       "env": server.env, "log": (folder / f"{prefix}.server.log").name, "pid": server.process.pid,
                       "effective_plugin_config": (points[-1]["plugin"] or {}).get("config") if points else None},
        })
    run_points = [{"instance": r["instance"], **p} for r in replicates if r["arms"] == [RUN] for p in r["sweep"]]
    run_metrics, run_counters = _arm_summary(run_points)
    baseline_metrics, _ = _arm_summary([p for r in replicates if r["arms"] == [BASELINE] for p in r["sweep"]])
    levels = concurrency_levels(spec.serve_max_concurrency)
    return envelope(
        spec, "ok", started_utc=started, finished_utc=provenance.utc_now(),
        engine_start_s=next((r["engine_start_s"] for r in replicates if r["arms"] == [RUN]), None),
        models={k: provenance.display_path(v) for k, v in models.items()}, env=provenance.collect(),
        features={"capability": cap.to_dict(), "requested": {"adaptive_draft_length": spec.adaptive_draft_length,
                  "confidence_threshold": spec.confidence_threshold}, **plans[RUN].to_dict(),
                  "arms": {name: plan.to_dict() for name, plan in plans.items()}},
        design={"name": "engines-interleaved", "engine_instances": len(order), "order": order, "seed": spec.seed,
                "arms": [{"name": name, "adaptive_draft_length": arm.adaptive_draft_length,
                          "confidence_threshold": arm.confidence_threshold} for name, arm in arms.items()]},
        replicates=replicates,
        serving={"levels": levels, "requests_per_level": [requests_at(spec, c) for c in levels],
                 "aa": arms[RUN] == arms[BASELINE],  # an A/A run: both arms have the same settings
                 "request_rate": spec.serve_request_rate,
                 "slo_ms": {"ttft": spec.serve_slo_ttft_ms, "tpot": spec.serve_slo_tpot_ms},
                 "client": "vllm bench serve", "artifacts": folder.name, "arms": {BASELINE: baseline_metrics}},
        results=[{"batch": k, "instance": p["instance"], "concurrency": p["concurrency"],
                  "latency_s": p["duration_s"], "num_requests": p["num_prompts"], "num_output_tokens": p["num_output_tokens"], "output_tokens_per_s": p["output_tokens_per_s"]}
                 for k, p in enumerate(run_points)],
        metrics=run_metrics, counters=run_counters,
        summary=seed_summary(spec, run_metrics, None),
        ncu={"status": "off", "reason": "serving runs are not profiled"},
    )
