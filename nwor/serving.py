"""One serving run: each arm on its own `vllm serve` instances in a balanced interleaved order (ABBA), each
instance swept over load; the result document in the replicate contract's shape.

Arms come from the spec as for offline runs (nwor.design: arm "run" plus `arms`, e.g. the grid's
`baseline: features_off`); a run whose arms share its settings is an A/A comparison. Plugin settings
reach a server only at start-up (`NWOR_PLUGIN_CONFIG`), so every arm gets separate server instances:
`serve_instances` per arm.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from nwor import metrics as m
from nwor import provenance
from nwor.config import RunSpec
from nwor.design import RUN_ARM, WarmupRule
from nwor.errors import ConfigError
from nwor.features import detect_capability
from nwor.instances import plan_design
from nwor.load import concurrency_levels, requests_at, sweep
from nwor.models import resolve_models
from nwor.prompts import prompts_for
from nwor.results import envelope, seed_summary
from nwor.serve import start_server, stop_server


def artifacts_dir(result_path: str | Path) -> Path:
    """`<run_id>.serve/` next to the result JSON: server logs, client results, prompt files."""
    path = Path(result_path)
    return path.with_name(path.stem + ".serve")


def _display_arg(arg: str) -> str:
    """A command-line argument as results record it: no home folder (also inside JSON values)."""
    return provenance.display_path(arg) if arg.startswith("/") else arg.replace(str(Path.home()), "~")


def _arm_totals(points: list[dict]) -> tuple[dict, dict | None]:
    """Counter deltas and plugin counters of several load points added up."""
    counters, plugin = {}, None
    for point in points:
        counters = m.add(counters, point["counters"])
        if point["plugin"] is not None:
            plugin = m.add_plugin_stats(plugin, point["plugin"])
    return counters, plugin


def _arm_summary(points: list[dict]) -> dict:
    """An arm over all its instances' points: tokens/s over the whole sweep, spec-decode over all points."""
    duration = sum(p["duration_s"] or 0 for p in points)
    tokens = sum(p["num_output_tokens"] or 0 for p in points)
    counters, plugin = _arm_totals(points)
    return {"output_tokens_per_s": tokens / duration if duration else None, "num_points": len(points),
            **m.spec_decode_metrics(counters), "plugin": plugin}


def plan_serving(spec: RunSpec, cap):
    """The run's arms, one engine group per arm (servers cannot switch plugin settings live), and the
    balanced order of `serve_instances` rounds over them; decided before any server starts.

    Raises:
        FeatureUnavailable: an arm needs a feature this build cannot provide.
        ConfigError: an arm is inconsistent.
    """
    return plan_design(dataclasses.replace(spec, arm_design="engines", engine_instances=spec.serve_instances,
                                           measured_batches=1), cap)


def _serve_instance(design, inst: dict, spec: RunSpec, models: dict, prompts: list[str], folder: Path,
                    log_path: Path) -> dict:
    """Start one arm's server, warm it up, sweep it, stop it: the instance's replicate record."""
    setup = design.setups[inst["group"]]
    (arm,) = inst["arms"]
    arm_spec = design.arms[arm].spec
    prefix = f"instance{inst['instance']}_{arm}"
    started_utc = provenance.utc_now()
    server = start_server(arm_spec, models, setup.plan, folder / f"{prefix}.server.log")
    try:
        warmup, points = sweep(arm_spec, server, models["target_model"], prompts, folder, prefix, log_path,
                               plugin=setup.plugin_loaded, rule=WarmupRule.of(spec))
    finally:
        stop_server(server)
    counters, plugin = _arm_totals(points)
    return {
        "instance": inst["instance"], "group": inst["group"], "arms": [arm], "plugin_loaded": setup.plugin_loaded,
        "started_utc": started_utc, "finished_utc": provenance.utc_now(), "engine_start_s": server.start_s,
        "warmup": warmup,
        "batches": [{"arm": arm, "position": p["position"], "concurrency": p["concurrency"],
                     "latency_s": p["duration_s"], "num_output_tokens": p["num_output_tokens"],
                     "output_tokens_per_s": p["output_tokens_per_s"]} for p in points],
        "counters": {arm: {**m.spec_decode_metrics(counters), "plugin": plugin}}, "sweep": points,
        "server": {"argv": [_display_arg(a) for a in server.argv], "env": server.env, "pid": server.process.pid,
                   "log": f"{prefix}.server.log",
                   "effective_plugin_config": (points[-1]["plugin"] or {}).get("config") if points else None},
    }


def measure_serving(spec: RunSpec, *, result_path: str | Path, log_path: str | Path) -> dict:
    """Run the serving sweep of one run and return its result document (status ok); writes only artifacts.

    Raises:
        ConfigError: the spec is not a serving run, or prompts/models/arms cannot be resolved.
        FeatureUnavailable: an arm asks for a feature this build cannot provide (before any server starts).
        ServerError: a server did not start, or a client failed (names the log to open).
    """
    if not spec.serving:
        raise ConfigError(f"run {spec.run_id}: serve_max_concurrency is not set, so this is not a serving run")
    started = provenance.utc_now()
    cap = detect_capability()
    design = plan_serving(spec, cap)
    models = resolve_models(spec)
    prompts = prompts_for(spec)
    folder = artifacts_dir(result_path)
    folder.mkdir(parents=True, exist_ok=True)
    replicates = [_serve_instance(design, inst, spec, models, prompts, folder, Path(log_path))
                  for inst in design.instances]
    by_arm = {name: [{"instance": r["instance"], **p} for r in replicates if r["arms"] == [name] for p in r["sweep"]]
              for name in design.arms}
    metrics = _arm_summary(by_arm[RUN_ARM])
    counters, _ = _arm_totals(by_arm[RUN_ARM])
    plan = design.plans[RUN_ARM]
    levels = concurrency_levels(spec.serve_max_concurrency)
    settings = {name: {f: getattr(arm.spec, f) for f in ("adaptive_draft_length", "confidence_threshold",
                                                           "draft_length_options")}
                for name, arm in design.arms.items()}
    plugin_config = next(r["server"]["effective_plugin_config"] for r in replicates if r["arms"] == [RUN_ARM]) or {}
    effective = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens,
                 "adaptive_draft_length": plugin_config.get("adaptive_draft_length"),
                 "confidence_threshold": plugin_config.get("confidence_threshold"),
                 "draft_length_options": plugin_config.get("draft_length_options"),
                 "source": "server flags; plugin config read back through /collective_rpc" if plugin_config
                 else "server flags"}
    summary = seed_summary(spec, metrics, None)
    summary["per_mode"][0]["batches"] = len(by_arm[RUN_ARM])  # arm "run"'s load points over its instances
    return envelope(
        spec, "ok", started_utc=started, finished_utc=provenance.utc_now(),
        engine_start_s=next((r["engine_start_s"] for r in replicates if r["arms"] == [RUN_ARM]), None),
        models={k: provenance.display_path(v) for k, v in models.items()}, env=provenance.collect(),
        features={"capability": cap.to_dict(), "requested": {"adaptive_draft_length": spec.adaptive_draft_length,
                  "confidence_threshold": spec.confidence_threshold}, **plan.to_dict(), "effective": effective,
                  "arms": {name: p.to_dict() for name, p in design.plans.items()}},
        design={**design.to_dict(), "instance_kind": "vllm serve", "instances_per_arm": spec.serve_instances,
                "rule": "serving: every arm gets its own servers (plugin settings are fixed at server start); "
                        "orders are seeded permutations, then reversed (ABBA)"},
        replicates=replicates,
        serving={"levels": levels, "requests_per_level": [requests_at(spec, c) for c in levels],
                 "aa": len(settings) > 1 and len({repr(v) for v in settings.values()}) == 1,
                 "request_rate": spec.serve_request_rate,
                 "slo_ms": {"ttft": spec.serve_slo_ttft_ms, "tpot": spec.serve_slo_tpot_ms},
                 "client": "vllm bench serve", "artifacts": folder.name,
                 "arms": {name: _arm_summary(points) for name, points in by_arm.items()}},
        results=[{"batch": k, "instance": p["instance"], "concurrency": p["concurrency"],
                  "latency_s": p["duration_s"], "num_requests": p["num_prompts"],
                  "num_output_tokens": p["num_output_tokens"], "output_tokens_per_s": p["output_tokens_per_s"]}
                 for k, p in enumerate(by_arm[RUN_ARM])],
        metrics=metrics, counters=counters, summary=summary,
        ncu={"status": "off", "reason": "serving runs are not profiled"},
    )
