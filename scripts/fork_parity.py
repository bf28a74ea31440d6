"""Parity of nwor's plugin (stock vLLM) with the IluvatarLabs fork's own code: tiny models, same prompts, T = 0.

Each variant (features off, adaptive on, early exit at 0.3 / 0.5 / 0.7) runs twice through
`python -m nwor.bench`: with the fork environment's python (`feature_impl: native`, the fork's switches) and
with this environment's python (`feature_impl: plugin`). Both sides read one model cache, built by the fork
environment's python (its older transformers cannot read tokenizers the newer one saves).

The fork exposes neither chosen lengths nor early-exit counters (its PR branch has no counters and no log line),
so the fork side loads `install_counters` below as a vLLM general plugin, found through a throwaway
`.dist-info` on PYTHONPATH. It wraps, in the engine process, `EagleProposer.propose` (the length each step
drafted; each gateable loop forward's gate read from the fork's own `continue_mask`) and
`SpecDecodingStats.update_acceptance_ewma` (the per-step acceptance the fork's controller saw). It changes
nothing the fork computes.

    python scripts/fork_parity.py --fork-python FORK_VENV/bin/python --out DIR
    (NWOR_ENGINE_LOCK=FILE: each of its engine starts waits on `flock FILE`, for machines that share engines)

`replay` is the fork side of tests/test_fork_controller.py: run by the fork's python, it feeds acceptance
sequences (JSON on stdin) through the fork's `SpecDecodingStats` and prints the lengths it chooses.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTERS_ENV = "NWOR_FORK_COUNTERS"  # file the fork-side counters are written to; unset: plugin inert
VARIANTS = {"off": (False, 0.0), "adaptive": (True, 0.0), "0.3": (False, 0.3), "0.5": (False, 0.5),
            "0.7": (False, 0.7)}
# Tiny pair, 16 prompts x 64 tokens, k = 10, eager, float32 (no bf16 rounding between two builds' kernels).
SPEC = {"target_model": "tiny", "draft_model": "tiny-eagle", "method": "eagle", "num_speculative_tokens": 10,
        "num_requests": 16, "measured_batches": 2, "warmup_batches": 0, "temperature": 0.0,
        "max_new_tokens": 64, "ignore_eos": True, "enforce_eager": True, "dtype": "float32",
        "prompt_set": "builtin:chat", "max_model_len": 512, "profile": "fork-parity", "grid": "adhoc"}
LOCK = os.environ.get("NWOR_ENGINE_LOCK")  # when set, each engine start waits on `flock` of this file
TARGETS = {"histogram_pct_of_steps": 5.0, "stop_pct_points": 2.0, "acceptance": 0.02}


def install_counters() -> None:
    """vLLM general plugin for the fork's engine process: record lengths, gates and acceptance; change nothing."""
    path = os.environ.get(COUNTERS_ENV)
    if not path:
        return
    from vllm.v1.spec_decode.eagle import EagleProposer
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    if getattr(EagleProposer, "nwor_counted", False):
        return
    trace = {"events": [], "histogram": {}, "steps": 0, "checks": 0, "tokens_stopped": 0}
    propose, update = EagleProposer.propose, SpecDecodingStats.update_acceptance_ewma

    def save():
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(trace, out)
        os.replace(tmp, path)

    def counting_propose(self, *args, **kwargs):
        rows = kwargs["next_token_ids"].shape[0]
        builder = self.attn_metadata_builder or self._get_attention_metadata_builder()
        if not getattr(builder, "nwor_counted", False):
            build = builder.build_for_drafting

            def counting_build(*a, **kw):
                # Loop iteration j = draft_index - 1 >= 1 is the fork's gated one (j = 0 never is): rows whose
                # continue_mask is already False run it gated. K - 2 checks per row per step, as nwor counts.
                if kw.get("draft_index", 0) >= 2:
                    trace["checks"] += self.nwor_rows
                    trace["tokens_stopped"] += int((~self.continue_mask[: self.nwor_rows]).sum())
                return build(*a, **kw)

            builder.build_for_drafting, builder.nwor_counted = counting_build, True
        self.nwor_rows = rows
        drafts = propose(self, *args, **kwargs)
        length = int(drafts.shape[1])
        trace["histogram"][str(length)] = trace["histogram"].get(str(length), 0) + 1
        trace["steps"] += 1
        trace["events"].append(["choose", length])
        save()
        return drafts

    def recording_update(self, batch_acceptance_rate, batch_count):
        trace["events"].append(["observe", batch_acceptance_rate])
        return update(self, batch_acceptance_rate, batch_count)

    EagleProposer.propose, EagleProposer.nwor_counted = counting_propose, True
    SpecDecodingStats.update_acceptance_ewma = recording_update


def replay_fork(sequences: list[dict]) -> list[list[int]]:
    """Chosen lengths of the fork's own controller (run with the fork's python).

    A sequence is {"num_speculative_tokens": n, "options": [...], "events": [["choose"] | ["observe", a, d] |
    ["observe", rate]]}. "choose" is one step's `compute_optimal_draft_length` followed by
    `EagleProposer.propose`'s normalisation (None -> n, < 1 -> 1, > n -> n; checked against the fork's source
    by the test); "observe" is the runner's `update_acceptance_ewma(accepted / drafted)`. With "with_ewma",
    each chosen length comes as [length, the EWMA it was chosen from].
    """
    from vllm.v1.spec_decode.metrics import SpecDecodingStats

    chosen = []
    for seq in sequences:
        n, stats, lengths = seq["num_speculative_tokens"], SpecDecodingStats.new(seq["num_speculative_tokens"]), []
        for event in seq["events"]:
            if event[0] == "choose":
                length = stats.compute_optimal_draft_length(seq["options"])
                length = n if length is None else 1 if length < 1 else min(length, n)
                lengths.append([length, stats.acceptance_rate_ewma] if seq.get("with_ewma") else length)
            else:
                rate = event[1] if len(event) == 2 else event[1] / event[2]
                stats.update_acceptance_ewma(rate, 1)
        chosen.append(lengths)
    return chosen


def fork_env(fork_python: str, model_cache: str) -> dict:
    """What every fork-environment process needs (the fork-cpu kit's README: shim preload, KV space)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "NWOR_MODEL_CACHE": model_cache,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    shim = Path(fork_python).parent.parent / "cxa_shim.so"
    if shim.exists():
        env["LD_PRELOAD"] = str(shim)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # 0.11.1 schedules no drafts in-process
    return env


def ensure_models(fork_python: str, model_cache: str) -> None:
    """Build the tiny pair with the fork's python (the older tokenizer format both sides can read)."""
    subprocess.run([fork_python, "-c", "from nwor.tiny import ensure_tiny_models; ensure_tiny_models()"],
                   env=fork_env(fork_python, model_cache), check=True, capture_output=True)


def _counters_plugin_dir(folder: Path) -> Path:
    dist = folder / "nwor_fork_counters-0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nwor-fork-counters\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nnwor_fork_counters = fork_parity:install_counters\n")
    return folder


def run_side(side: str, variant: str, python: str, env: dict, out: Path) -> dict:
    """One engine, one variant, through `python -m nwor.bench`; returns the result with `fork_counters` added.

    Raises:
        RuntimeError: the bench failed (its stderr tail is in the message).
    """
    adaptive, threshold = VARIANTS[variant]
    spec = {**SPEC, "run_id": f"{side}_{variant}", "adaptive_draft_length": adaptive,
            "confidence_threshold": threshold, "feature_impl": "native" if side == "fork" else "plugin"}
    spec_path, result_path = out / f"{side}_{variant}.spec.json", out / f"{side}_{variant}.json"
    spec_path.write_text(json.dumps(spec))
    env, counters = dict(env), out / f"{side}_{variant}.counters.json"
    if side == "fork":
        env[COUNTERS_ENV] = str(counters)
        env["PYTHONPATH"] += os.pathsep + str(_counters_plugin_dir(out / "plugin"))
    elif variant == "off":
        # nwor runs features-off without the plugin; load it idle so that it counts steps and lengths, written
        # by the engine process at exit (the stats_path route of nwor.plugin).
        env["NWOR_PLUGIN_CONFIG"] = json.dumps({"adaptive_draft_length": False, "draft_length_options": None,
                                                "confidence_threshold": 0.0, "stats_path": str(counters)})
    lock = ["flock", LOCK] if LOCK else []  # one engine at a time on a shared machine
    done = subprocess.run([*lock, python, "-m", "nwor.bench", "--spec", str(spec_path), "--out", str(result_path),
                           "--log", str(out / f"{side}_{variant}.vllm.log")], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {variant}: nwor.bench exited {done.returncode}: {done.stderr[-2000:]}")
    doc = json.loads(result_path.read_text())
    if counters.exists():
        doc["side_counters"] = json.loads(counters.read_text())
    return doc


def side_summary(doc: dict) -> dict:
    """The numbers parity compares, from either side's result."""
    metrics, hashes = doc["metrics"], [h for b in doc["results"] for h in b["output_hashes"]]
    if "side_counters" in doc:  # the fork's recorded counters, or the idle plugin's exit-time stats
        c = doc["side_counters"]
        histogram, steps = c.get("histogram", c.get("draft_length_histogram")), c["steps"]
        checks, stopped = c["checks"], c["tokens_stopped"]
    else:
        histogram, steps = doc["draft_lengths"]["histogram"], doc["draft_lengths"]["steps"]
        checks, stopped = doc["early_exit"]["checks"], doc["early_exit"]["tokens_stopped"]
    return {"output_hashes": hashes, "acceptance": metrics["draft_acceptance_rate"],
            "num_drafts": metrics["num_drafts"], "num_draft_tokens": metrics["num_draft_tokens"],
            "num_accepted_tokens": metrics["num_accepted_tokens"], "steps": steps,
            "histogram": {str(k): v for k, v in sorted((histogram or {}).items(), key=lambda kv: int(kv[0]))},
            "checks": checks, "tokens_stopped": stopped,
            "stop_pct": 100.0 * stopped / checks if checks else None,
            "vllm_version": doc["env"]["vllm_version"], "switches": doc["features"]["switches"]}


def histogram_gap_pct(a: dict, b: dict) -> float:
    """Largest per-length difference of the two histograms, each as a % of its own steps."""
    sa, sb = sum(a.values()) or 1, sum(b.values()) or 1
    return max(abs(100.0 * a.get(k, 0) / sa - 100.0 * b.get(k, 0) / sb) for k in set(a) | set(b))


def compare(variant: str, fork: dict, plugin: dict) -> dict:
    """Targets of the parity issue for one variant (None where a target does not apply)."""
    row = {"variant": variant, "fork": fork, "plugin": plugin,
           "outputs_identical": fork["output_hashes"] == plugin["output_hashes"],
           "acceptance_gap": abs(fork["acceptance"] - plugin["acceptance"]),
           "histogram_gap_pct": histogram_gap_pct(fork["histogram"], plugin["histogram"]),
           "stop_pct_gap": None}
    if VARIANTS[variant][1] > 0:
        row["stop_pct_gap"] = abs((fork["stop_pct"] or 0.0) - (plugin["stop_pct"] or 0.0))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fork_parity.py", description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=("measure", "replay"))
    parser.add_argument("--fork-python", help="the fork environment's python (fork-cpu kit)")
    parser.add_argument("--out", help="folder for specs, results, logs and parity.json")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ",".join(VARIANTS))
    args = parser.parse_args(argv)
    if args.mode == "replay":
        print("\n" + json.dumps(replay_fork(json.load(sys.stdin))))  # last line: vLLM may log to stdout
        return 0
    variants = args.variants.split(",")
    if not args.fork_python or not args.out or any(v not in VARIANTS for v in variants):
        print("fork_parity.py: error: --fork-python, --out and known --variants are required", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = str(out / "models")
    ensure_models(args.fork_python, cache)
    plugin_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "NWOR_MODEL_CACHE": cache, "PYTHONPATH": str(ROOT)}
    rows = []
    for variant in variants:
        fork = side_summary(run_side("fork", variant, args.fork_python, fork_env(args.fork_python, cache), out))
        plugin = side_summary(run_side("plugin", variant, sys.executable, plugin_env, out))
        rows.append(compare(variant, fork, plugin))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("fork", "plugin")}), flush=True)
    tmp = out / ".parity.json.tmp"
    tmp.write_text(json.dumps({"spec": SPEC, "targets": TARGETS, "rows": rows}, indent=1))
    os.replace(tmp, out / "parity.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
