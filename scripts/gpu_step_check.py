#!/usr/bin/env python3
"""Does the GPU do an 8B's work? Decode step time at batch 1 against the weight-streaming bound, and acceptance.

    python scripts/gpu_step_check.py --out outputs/gpu-step-check/step_check.json

Builds (or reuses) the `llama8b-shaped` pair (nwor.tiny; `--target/--draft` take local folders instead),
then measures one configuration per fresh engine through nwor's own measurement, `python -m nwor.bench`:
speculation off, then EAGLE with k = 5 and 10, each at T = 0, batch 1 (one request per batch). The time
per output token with speculation off is a decode step; it must be at least the time to stream the
weights a step reads (all but the embedding table) at `--bandwidth-tb-s`. Writes one JSON; each run's
full result and vLLM log go to `<OUT stem>.d/`. Runs whose result is already there are reused (run the
same command again after a cut-off; `--fresh` redoes them). Exits 1 when a run failed or the step is
faster than the bound, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `nwor` from this checkout when it is not installed
    sys.path.insert(0, str(REPO))

from nwor import provenance  # noqa: E402
from nwor.results import SCHEMA_VERSION, write_result  # noqa: E402

H100_SXM_TB_S = 3.35  # H100 SXM5 HBM3 peak bandwidth (NVIDIA's data sheet)
EMBEDDING = "model.embed_tokens.weight"  # a decode step reads one row of it, not the table


def safetensors_bytes(folder: Path) -> dict[str, int]:
    """Bytes of every tensor in a folder's *.safetensors files, from their headers (nothing is loaded).

    Raises:
        ValueError: no safetensors file in `folder`.
    """
    sizes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                sizes[name] = end - start
    if not sizes:
        raise ValueError(f"no safetensors weights in {folder}")
    return sizes


def run_specs(args, models: dict) -> dict[str, dict]:
    """One RunSpec mapping per configuration to measure, by name ("off", "k5", "k10", ...)."""
    common = {"profile": "adhoc", "grid": "gpu-step-check", "target_model": models["target"],
              "tiny_models": args.tiny_models, "num_requests": 1, "measured_batches": args.batches,
              "warmup_batches": args.warmup, "temperature": 0.0, "max_new_tokens": args.tokens,
              "ignore_eos": True, "max_model_len": args.max_model_len,
              "gpu_memory_utilization": args.gpu_memory_utilization,
              "tensor_parallel_size": args.tensor_parallel_size, "attention_backend": args.attention_backend,
              "prompt_set": "builtin:chat", "seed": 0}
    specs = {}
    for name in args.runs:
        if name == "off":
            specs[name] = {**common, "run_id": "step-off", "method": "none", "draft_model": None}
        else:
            specs[name] = {**common, "run_id": f"step-eagle-{name}", "method": "eagle", "draft_model": models["draft"],
                           "num_speculative_tokens": int(name[1:])}
    return specs


def measure(name: str, spec: dict, workdir: Path, fresh: bool) -> dict:
    """Run `python -m nwor.bench` for one spec (one retry: vLLM's engine start rarely crashes) → its result."""
    out = workdir / f"{name}.json"
    if out.exists() and not fresh:
        doc = json.loads(out.read_text())
        if doc.get("status") == "ok":
            return doc
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    argv = [sys.executable, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(out),
            "--log", str(workdir / f"{name}.vllm.log")]
    for _ in range(2):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if proc.returncode == 0 and out.exists():
            return json.loads(out.read_text())
    return {"status": "failed", "rc": proc.returncode, "stderr_tail": proc.stderr[-2000:]}


def summarise_run(doc: dict) -> dict:
    """Step time, acceptance and output identity of one measured configuration."""
    if doc.get("status") != "ok":
        return {"status": "failed", **{k: doc.get(k) for k in ("rc", "stderr_tail", "error")}}
    met, batches = doc["metrics"], doc["results"]
    tokens = sum(b["num_output_tokens"] for b in batches)
    latency = sum(b["latency_s"] for b in batches)
    tpot = met.get("mean_tpot_s")
    return {
        "status": "ok",
        "engine_start_s": doc.get("engine_start_s"),
        "dtype": ((doc.get("features") or {}).get("effective") or {}).get("dtype"),  # what the engine ran in
        "batches": len(batches), "output_tokens": tokens,
        "tpot_ms": None if tpot is None else tpot * 1e3,  # decode time per output token (TTFT excluded)
        "latency_per_token_ms": latency / tokens * 1e3 if tokens else None,  # prefill included
        "draft_acceptance_rate": met.get("draft_acceptance_rate"),
        "mean_acceptance_length": met.get("mean_acceptance_length"),
        "acceptance_rate_per_pos": met.get("acceptance_rate_per_pos"),
        "output_hashes": [h for b in batches for h in b["output_hashes"]],
        "gpu_memory_used_bytes": met.get("gpu_memory_used_bytes"),
    }


def check(runs: dict, weight_bytes: int, streamed_bytes: int, bandwidth_tb_s: float) -> dict:
    """The step-time verdict: speculation-off time per output token against bytes streamed / bandwidth."""
    bound_ms = streamed_bytes / (bandwidth_tb_s * 1e12) * 1e3
    off = runs.get("off") or {}
    step = off.get("tpot_ms")
    out = {"bound_ms": bound_ms, "bound_all_weights_ms": weight_bytes / (bandwidth_tb_s * 1e12) * 1e3,
           "step_ms": step, "step_over_bound": step / bound_ms if step else None,
           "at_least_bound": None if step is None else step >= bound_ms}
    for name, run in runs.items():
        if name != "off" and run.get("status") == "ok":
            run["matches_off_outputs"] = (run["output_hashes"] == off["output_hashes"]
                                          if off.get("status") == "ok" else None)
            run["speedup_vs_off"] = step / run["tpot_ms"] if step and run.get("tpot_ms") else None
    return out


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the summary JSON to write")
    parser.add_argument("--tiny-models", default="llama8b-shaped", help="nwor.tiny recipe to build (RECIPES)")
    parser.add_argument("--target", help="local target folder instead of the recipe (with --draft)")
    parser.add_argument("--draft", help="local EAGLE head folder (with --target)")
    parser.add_argument("--runs", default="off,k5,k10", help="comma-separated: off and/or k<draft tokens>")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    parser.add_argument("--batches", type=int, default=5, help="measured batches (one request each)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up batches")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                        help="0.5 of an 80 GB H100: 16 GB weights + ~20 GB KV cache")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--attention-backend", default="auto",
                        help="auto: FLASH_ATTN on CUDA (the offline install has no flashinfer), vLLM's own on CPU")
    parser.add_argument("--bandwidth-tb-s", type=float, default=H100_SXM_TB_S)
    parser.add_argument("--fresh", action="store_true", help="measure again even where a result exists")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    if not args.runs or any(r != "off" and not (r[:1] == "k" and r[1:].isdigit() and int(r[1:]) >= 1)
                            for r in args.runs):
        parser.error(f"--runs must list off and/or k<N> (N >= 1), got {','.join(args.runs)!r}")
    if bool(args.target) != bool(args.draft):
        parser.error("--target and --draft go together")
    for name in ("tokens", "batches", "max_model_len", "tensor_parallel_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1 or args.bandwidth_tb_s <= 0 or args.warmup < 0:
        parser.error("--gpu-memory-utilization must be in (0, 1], --bandwidth-tb-s > 0, --warmup >= 0")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = _parse(argv)
    from nwor.tiny import RECIPES, ensure_tiny_models

    if args.tiny_models not in RECIPES:
        parser.error(f"--tiny-models must be one of {', '.join(RECIPES)}")
    build_s = recipe = None
    if args.target:
        models = {"target": args.target, "draft": args.draft}
    else:
        start = time.perf_counter()
        tiny = ensure_tiny_models(RECIPES[args.tiny_models])
        build_s, recipe = time.perf_counter() - start, asdict(tiny.recipe)
        models = {"target": tiny.target, "draft": tiny.draft}
    if args.attention_backend == "auto":
        import torch

        args.attention_backend = "FLASH_ATTN" if torch.cuda.is_available() else None
    try:
        sizes = safetensors_bytes(Path(models["target"]))
    except (OSError, ValueError) as err:
        parser.error(str(err))
    out = Path(args.out)
    workdir = out.parent / f"{out.stem}.d"
    workdir.mkdir(parents=True, exist_ok=True)
    started = provenance.utc_now()
    runs = {name: summarise_run(measure(name, spec, workdir, args.fresh))
            for name, spec in run_specs(args, models).items()}
    weight_bytes, streamed = sum(sizes.values()), sum(v for k, v in sizes.items() if k != EMBEDDING)
    verdict = check(runs, weight_bytes, streamed, args.bandwidth_tb_s)
    config = json.loads((Path(models["target"]) / "config.json").read_text())
    failed = [n for n, r in runs.items() if r["status"] != "ok"]
    doc = {
        "schema_version": SCHEMA_VERSION, "status": "failed" if failed else "ok", "failed_runs": failed,
        "started_utc": started, "finished_utc": provenance.utc_now(),
        "command": "python scripts/gpu_step_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": {"tiny_models": None if args.target else args.tiny_models, "recipe": recipe, "build_s": build_s,
                  "target": provenance.display_path(models["target"]),
                  "draft": provenance.display_path(models["draft"]),
                  "num_hidden_layers": config.get("num_hidden_layers"), "hidden_size": config.get("hidden_size"),
                  "vocab_size": config.get("vocab_size"), "dtype": config.get("dtype") or config.get("torch_dtype"),
                  "weight_bytes": weight_bytes, "streamed_bytes_per_step": streamed},
        "bandwidth_tb_s": args.bandwidth_tb_s,
        "settings": {k: getattr(args, k) for k in ("tokens", "batches", "warmup", "max_model_len",
                                                   "gpu_memory_utilization", "tensor_parallel_size",
                                                   "attention_backend")},
        "step_check": verdict, "runs": runs, "gpus": provenance.gpu_info(),
    }
    write_result(out, doc)
    print(json.dumps({"status": doc["status"], "step_check": verdict,
                      **{n: {k: r.get(k) for k in ("tpot_ms", "draft_acceptance_rate", "matches_off_outputs")}
                         for n, r in runs.items()}}, indent=1))
    return 1 if failed or verdict["at_least_bound"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
