"""Acceptance per draft position of a built tiny pair, on this machine's vLLM, at a chosen draft_noise.

    python scripts/tiny_acceptance.py --recipe llama8b-shaped --twin --draft-noise 0.03 [--k 10]

`--twin` builds the recipe's 1-layer twin on the CPU: the same active layer, embeddings, `lm_head` and EAGLE
head construction without the inert layers, which add nothing to the residual stream, so acceptance does not
depend on them (docs/tiny_models.md). That predicts a GPU target's acceptance without a GPU (for
llama8b-shaped at noise 0.1: 1.54 tokens a step here against 1.64 measured on the H100). Prints one JSON line:
the recipe, mean acceptance length and acceptance rate per position over the measured requests (T = 0, chat
prompts, one warm-up request pair first). Exit 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="llama8b-shaped", help="a name in nwor.tiny.RECIPES")
    parser.add_argument("--twin", action="store_true", help="1-layer twin, built on the CPU")
    parser.add_argument("--draft-noise", type=float, default=None, help="override the recipe's draft_noise")
    parser.add_argument("--k", type=int, default=10, help="draft tokens per step")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args(argv)
    from nwor.tiny import RECIPES, ensure_tiny_models
    if args.recipe not in RECIPES:
        print(f"tiny_acceptance: error: unknown recipe {args.recipe!r} (known: {', '.join(RECIPES)})", file=sys.stderr)
        return 2
    if min(args.k, args.requests, args.tokens) < 1 or (args.draft_noise is not None and args.draft_noise < 0):
        print("tiny_acceptance: error: --k, --requests and --tokens must be >= 1, --draft-noise >= 0", file=sys.stderr)
        return 2
    recipe = RECIPES[args.recipe]
    changes = {"num_hidden_layers": 1, "build_device": "cpu"} if args.twin else {}
    if args.draft_noise is not None:
        changes["draft_noise"] = args.draft_noise
    recipe = dataclasses.replace(recipe, **changes)
    models = ensure_tiny_models(recipe)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one short engine: no separate core process
    from vllm import LLM, SamplingParams

    from nwor import metrics, prompts
    llm = LLM(model=models.target, tokenizer=models.target, max_model_len=512, enforce_eager=True, dtype="bfloat16",
              speculative_config={"method": "eagle", "model": models.draft, "num_speculative_tokens": args.k},
              gpu_memory_utilization=0.3, max_num_seqs=max(args.requests, 2), disable_log_stats=False)
    chosen = prompts.load_prompts("builtin:chat")[: args.requests]
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True, seed=0)
    llm.generate(chosen[:2], params, use_tqdm=False)  # warm-up, not counted
    before, started = metrics.snapshot(llm), time.perf_counter()
    llm.generate(chosen, params, use_tqdm=False)
    measured = metrics.spec_decode_metrics(metrics.diff(before, metrics.snapshot(llm)))
    print(json.dumps({"recipe": args.recipe, "twin": args.twin, "draft_noise": recipe.draft_noise, "k": args.k,
                      "requests": len(chosen), "tokens": args.tokens,
                      "seconds": round(time.perf_counter() - started, 1),
                      "mean_acceptance_length": measured.get("mean_acceptance_length"),
                      "acceptance_rate_per_pos": measured.get("acceptance_rate_per_pos")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
