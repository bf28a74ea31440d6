"""Benchmark nwor's own overheads on one grid run; prints one JSON line.

P1 (default): nwor's measured-batch latency ÷ a bare `LLM.generate` loop, same engine, same prompts,
             alternating the two, medians over --repeats rounds.
P2 (--ncu):   wall time of the run's Nsight Compute pass (`python -m nwor.bench` under ncu) ÷ the same
             command without ncu, with the number of ranges / kernels ncu measured.

Usage: python scripts/bench_overhead.py --profile gpu-smoke --run run3_r36_t128_temp0.0_d10_adaptive0 [--ncu]
       [--set ncu_replay_mode=kernel --set num_requests=4 --set max_new_tokens=8]  (a short per-kernel window)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _spec(profile: str, run_id: str, overrides: list[str]):
    """The grid's spec for `run_id`, with `name=value` overrides (YAML-parsed values)."""
    import dataclasses

    import yaml

    from nwor.grid import expand_all

    specs = [s for s in expand_all(["all"], profile) if s.run_id == run_id]
    if not specs:
        sys.exit(f"unknown run id {run_id!r} in profile {profile}")
    changes = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    return dataclasses.replace(specs[0], **changes)


def p1(spec, repeats: int) -> dict:
    from nwor import bench
    from nwor.models import resolve_models
    from nwor.engine import release_engine, start_engine
    from nwor.features import detect_capability, plan_features
    from nwor.prompts import batch_prompts, prompts_for

    plan = plan_features(spec, detect_capability())
    prompts = prompts_for(spec)
    llm = start_engine(spec, resolve_models(spec), plan)
    params = bench._sampling_params(spec)
    bench.warm_up(llm, spec, prompts)
    nwor_s, bare_s = [], []
    for _ in range(repeats):
        batches, _ = bench._run_batches(llm, spec, prompts)
        nwor_s.append(sum(b["latency_s"] for b in batches) / len(batches))
        times = []
        for b in range(spec.measured_batches):
            batch = batch_prompts(prompts, spec.warmup_batches + b, spec.num_requests)
            start = time.perf_counter()
            llm.generate(batch, params, use_tqdm=False)
            times.append(time.perf_counter() - start)
        bare_s.append(sum(times) / len(times))
    release_engine(llm)
    return {"nwor_batch_s": statistics.median(nwor_s), "bare_batch_s": statistics.median(bare_s),
            "p1_ratio": statistics.median(nwor_s) / statistics.median(bare_s), "repeats": repeats}


def p2(spec) -> dict:
    from nwor.ncu_pass import run_ncu_pass

    folder = Path(tempfile.mkdtemp(prefix="nwor-p2-"))
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict()))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(folder / "plain.json"),
                    "--log", str(folder / "plain.vllm.log"), "--profile-region"], check=True)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    record = run_ncu_pass(spec, folder / f"{spec.run_id}.json")
    profiled_s = time.perf_counter() - start
    return {"plain_s": plain_s, "profiled_s": profiled_s, "p2_ratio": profiled_s / plain_s,
            "ncu_status": record.get("status"), "num_ranges": record.get("num_ranges"),
            "num_kernels": record.get("num_kernels"), "replay_mode": record.get("replay_mode"),
            "totals": record.get("totals"), "reason": record.get("reason"), "folder": str(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--run", required=True, help="a run id of the profile")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ncu", action="store_true", help="measure P2 instead of P1")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a RunSpec field, e.g. --set ncu_replay_mode=kernel --set measured_batches=1")
    args = parser.parse_args()
    spec = _spec(args.profile, args.run, args.set)
    result = p2(spec) if args.ncu else p1(spec, args.repeats)
    print(json.dumps({"profile": args.profile, "run_id": args.run, **result}))


if __name__ == "__main__":
    main()
