#!/usr/bin/env python3
"""Cost of nwor's confidence gate inside one engine: A/B timing, the sync check and a torch-profiler trace.

    python3 scripts/profile_gate.py --out OUT.json [--tiny gpu] [--threshold 1e-4] [--rounds 4]

One engine process starts with the plugin loaded (features off), then, switching arms with
`nwor.plugin.configure` (no restart, no recompilation):
1. timing: arms "off" (PluginConfig()) and "gate" (confidence_threshold = --threshold; 1e-4 < 1/vocab stops
   nothing, so only the gate's own work differs), ABBA order per round, one `generate` per measurement;
2. sync check: one batch each of gate, adaptive and both with `nwor.plugin.set_sync_check(llm, True)`: a
   host read of a tensor inside nwor's hook code (and on CUDA any synchronising call there,
   `torch.cuda.set_sync_debug_mode("error")`) fails the step;
3. profile: one batch per arm under torch.profiler in the engine process; Chrome traces go to
   `<OUT stem>.d/<arm>.trace.json`, the summary (nwor::* ranges, top ops) into OUT.json.
Prints OUT.json's summary; exits 1 when the sync check fails. Timings are this machine's (CPU: noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (str(REPO), str(REPO / "scripts")):
    if path not in sys.path:
        sys.path.insert(0, path)

import gpu_validate_plugin as validate  # noqa: E402  (engine settings and the entry-point helper)

from nwor.plugin import ENV_VAR, PluginConfig, required_engine_env, required_engine_kwargs  # noqa: E402

PROMPT_WORDS = ["the dragon was", "write a story about the river", "how do I print a list", "the castle at night"]


def arms(threshold: float) -> dict[str, PluginConfig]:
    return {"off": PluginConfig(), "gate": PluginConfig(confidence_threshold=threshold)}


def abba_order(rounds: int) -> list[str]:
    """off, gate, gate, off per round, then the mirror, so neither arm always runs first or warmer."""
    order = []
    for r in range(rounds):
        order += ["off", "gate", "gate", "off"] if r % 2 == 0 else ["gate", "off", "off", "gate"]
    return order


def summarize_timing(samples: list[tuple[str, float]]) -> dict:
    """Median latency per arm and gate / off (pure; tested without an engine)."""
    by_arm: dict[str, list[float]] = {}
    for arm, seconds in samples:
        by_arm.setdefault(arm, []).append(seconds)
    medians = {arm: statistics.median(values) for arm, values in by_arm.items()}
    ratio = medians["gate"] / medians["off"] if {"gate", "off"} <= set(medians) else None
    return {"samples": [{"arm": a, "latency_s": s} for a, s in samples], "median_latency_s": medians,
            "gate_over_off": ratio}


def _drive(args) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    import nwor.plugin as plugin

    on_cuda = torch.cuda.is_available()
    kwargs = dict(validate.ENGINE_KWARGS) if on_cuda else {"max_model_len": 512, "seed": 0}
    kwargs["gpu_memory_utilization"] = 0.5 if on_cuda else 0.2
    llm = LLM(model=args.target, speculative_config={
        "method": "eagle", "model": args.draft, "num_speculative_tokens": args.num_speculative_tokens},
        enforce_eager=not args.cudagraphs and not on_cuda or args.eager,
        **({"dtype": args.dtype} if on_cuda else {}), **kwargs, **json.loads(args.required_engine_kwargs))
    prompts = [f"{PROMPT_WORDS[i % len(PROMPT_WORDS)]} {i}" for i in range(args.prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)

    def generate() -> float:
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    configs = arms(args.threshold)
    for name in configs:  # warm-up both arms
        plugin.configure(llm, configs[name])
        generate()
    samples, stats = [], {}
    for arm in abba_order(args.rounds):
        plugin.configure(llm, configs[arm])
        samples.append((arm, generate()))
        stats[arm] = plugin.read_stats(llm)
    result = {"device": torch.cuda.get_device_name() if on_cuda else "cpu",
              "timing": summarize_timing(samples), "last_stats": stats}
    checked = {"gate": configs["gate"], "adaptive": PluginConfig(adaptive_draft_length=True),
               "both": PluginConfig(adaptive_draft_length=True, confidence_threshold=args.threshold)}
    result["sync_check"] = {"mode": plugin.set_sync_check(llm, True), "arms": {}}
    for name, config in checked.items():
        plugin.configure(llm, config)
        try:
            generate()
            result["sync_check"]["arms"][name] = {"ok": True, "stats": plugin.read_stats(llm)}
        except Exception as err:  # the engine's error names the host read; the engine may be dead after it
            result["sync_check"]["arms"][name] = {"ok": False, "error": str(err).strip().splitlines()[0]}
            break
    if all(a["ok"] for a in result["sync_check"]["arms"].values()):
        plugin.set_sync_check(llm, False)
        result["profile"] = {}
        for name, config in configs.items():
            plugin.configure(llm, config)
            plugin.profile_start(llm)
            generate()
            trace = str(Path(args.trace_dir) / f"{name}.trace.json")
            result["profile"][name] = plugin.profile_stop(llm, trace)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", help="target folder (default: nwor.tiny models of --tiny)")
    parser.add_argument("--draft", help="EAGLE head folder (default: nwor.tiny models of --tiny)")
    parser.add_argument("--tiny", default="default", help="nwor.tiny recipe: 'default' (CPU) or 'gpu' (8B-shaped)")
    parser.add_argument("--threshold", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=36)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-speculative-tokens", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cudagraphs", action="store_true", help="(CPU: ignored) CUDA graphs are the GPU default")
    parser.add_argument("--eager", action="store_true", help="enforce_eager on the GPU too")
    parser.add_argument("--child-timeout-s", type=float, default=540.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace-dir", help=argparse.SUPPRESS)
    parser.add_argument("--required-engine-kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.child:
        out.write_text(json.dumps(_drive(args)))
        return 0
    start = time.perf_counter()
    if not args.target or not args.draft:
        from nwor.tiny import RECIPES, TinyRecipe, ensure_tiny_models

        recipe = TinyRecipe() if args.tiny == "default" else RECIPES[args.tiny]
        tiny = ensure_tiny_models(recipe)
        args.target, args.draft = args.target or tiny.target, args.draft or tiny.draft
    version = validate.installed_vllm_version()
    if version is None:
        parser.error("vLLM is not installed")
    workdir = out.parent / f"{out.stem}.d"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **required_engine_env(version), ENV_VAR: PluginConfig().to_json()}
    if "cpu" not in version:
        env.update(validate.ENGINE_ENV)
        env.pop("NWOR_VLLM_FIXES", None)
    python_path = [str(REPO)] + ([p] if (p := validate._ensure_entry_point(workdir)) else [])
    env["PYTHONPATH"] = os.pathsep.join(python_path + [x for x in [os.environ.get("PYTHONPATH")] if x])
    child_out, log = workdir / "child.json", workdir / "child.log"
    argv_child = [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(child_out),
                  "--trace-dir", str(workdir), "--required-engine-kwargs", json.dumps(required_engine_kwargs(version))]
    for name in ("target", "draft", "threshold", "rounds", "prompts", "max_tokens", "num_speculative_tokens", "dtype"):
        argv_child += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    argv_child += (["--cudagraphs"] if args.cudagraphs else []) + (["--eager"] if args.eager else [])
    with open(log, "w") as log_file:
        rc = subprocess.run(argv_child, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            timeout=args.child_timeout_s).returncode
    if rc != 0 or not child_out.exists():
        print(f"engine process failed (rc {rc}); see {log}: {log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
        return 2
    result = {**json.loads(child_out.read_text()), "vllm_version": version, "threshold": args.threshold,
              "prompts": args.prompts, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "num_speculative_tokens": args.num_speculative_tokens, "wall_s": time.perf_counter() - start}
    result["sync_check_ok"] = all(a["ok"] for a in result["sync_check"]["arms"].values())
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out)
    print(json.dumps({k: result[k] for k in ("device", "timing", "sync_check_ok", "vllm_version")}))
    return 0 if result["sync_check_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
