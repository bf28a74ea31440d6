"""Adaptive draft length: nwor's controller (nwor.plugin.elastic) against the fork's own code, step by step.

The fork side runs in the fork environment (`NWOR_FORK_PYTHON`, marker `fork`): its
`SpecDecodingStats.update_acceptance_ewma` / `compute_optimal_draft_length` and `EagleProposer.propose`'s
length normalisation, fed the same acceptance sequences as nwor's `ElasticState`. Sequences: generated ones
that cross every threshold both ways, plus per-step traces recorded from the fork's engine
(outputs/fork-cpu/parity*/fork_*.counters.json, scripts/fork_parity.py).
"""
from __future__ import annotations

import importlib.util
import json
import random
import subprocess
from pathlib import Path

import pytest
from conftest import fork_python

from nwor.plugin import PluginConfig
from nwor.plugin.elastic import EWMA_START, ElasticState, default_draft_length_options

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fork_parity.py"
RECORDED = sorted((ROOT / "outputs" / "fork-cpu").glob("parity*/fork_*.counters.json"))
STEPS = 200


def _parity_script():
    spec = importlib.util.spec_from_file_location("fork_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_fork(argv: list[str], stdin: str | None = None) -> str:
    """Run the fork environment's python (shim preloaded, as the fork-cpu kit says); return its stdout."""
    env = _parity_script().fork_env(fork_python(), str(ROOT / "outputs" / ".fork-models"))
    done = subprocess.run([fork_python(), *argv], input=stdin, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _rates() -> dict[str, list[float]]:
    """Per-step batch acceptance patterns: constants at and around each bound, ramps, waves, noise."""
    rng = random.Random(13)
    out = {f"constant {c}": [c] * STEPS for c in (0.0, 0.1, 0.29, 0.3, 0.31, 0.45, 0.5, 0.55, 0.7, 0.75, 0.9, 1.0)}
    out["ramp up"] = [i / (STEPS - 1) for i in range(STEPS)]
    out["ramp down"] = [1 - i / (STEPS - 1) for i in range(STEPS)]
    out["square 0.1/0.95"] = [0.95 if (i // 20) % 2 else 0.1 for i in range(STEPS)]
    out["square 0.4/0.8"] = [0.8 if (i // 7) % 2 else 0.4 for i in range(STEPS)]
    for k in range(8):
        out[f"uniform {k}"] = [rng.random() for _ in range(STEPS)]
    for k in range(4):  # integer batches, as the engine sees them
        out[f"batches {k}"] = [(rng.randint(0, 16 * 8), 16 * 8) for _ in range(STEPS)]
    return out


def _option_sets() -> list[tuple[int, list[int]]]:
    """(num_speculative_tokens, options): the fork's defaults for several n, and explicit lists of 1-5 lengths."""
    sets = [(n, list(default_draft_length_options(n))) for n in (2, 3, 4, 5, 8, 10, 15)]
    return sets + [(4, [1, 2, 3, 4]), (10, [2, 4, 6, 8, 10]), (8, [3, 7]), (6, [6]), (10, [2, 4, 8, 16])]


def generated_sequences() -> list[dict]:
    seqs = []
    for n, options in _option_sets():
        for name, rates in _rates().items():
            # The fork engine's order (recorded: fork_*.counters.json): a step proposes before the runner
            # books the previous step's acceptance, so the first two steps choose from the starting EWMA.
            events = [["choose"]]
            for rate in rates:
                events += [["choose"], ["observe", *rate] if isinstance(rate, tuple) else ["observe", rate]]
            seqs.append({"name": f"n={n} options={options} {name}", "num_speculative_tokens": n,
                         "options": options, "events": events})
    return seqs


def recorded_sequences() -> list[dict]:
    """Fork engine traces: the events the fork's controller saw, and the lengths the fork's engine drafted."""
    seqs = []
    for path in RECORDED:
        trace = json.loads(path.read_text())
        spec = json.loads(path.with_name(path.name.replace(".counters.json", ".spec.json")).read_text())
        n = spec["num_speculative_tokens"]
        seqs.append({"name": f"recorded {path.parent.name}/{path.name}", "num_speculative_tokens": n,
                     "options": list(default_draft_length_options(n)) if spec["adaptive_draft_length"] else [],
                     "events": trace["events"], "adaptive": spec["adaptive_draft_length"]})
    return seqs


def replay_nwor(seq: dict) -> list[int]:
    n = seq["num_speculative_tokens"]
    state = ElasticState(PluginConfig(adaptive_draft_length=True, draft_length_options=tuple(seq["options"])), n)
    lengths = []
    for event in seq["events"]:
        if event[0] == "choose":
            lengths.append(state.next_draft_length(n))
        elif len(event) == 2:
            state.observe_acceptance(event[1], 1.0)
        else:
            state.observe_acceptance(event[1], event[2])
    return lengths


def replay_fork(seqs: list[dict]) -> list[list[int]]:
    return json.loads(_run_fork([str(SCRIPT), "replay"], json.dumps(seqs)).strip().splitlines()[-1])  # vLLM logs to stdout


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if a != b and len(a) == len(b) else None
    return "lengths differ" if i is None else f"step {i}: fork {a[i]}, nwor {b[i]} (fork {a[:i + 1][-5:]})"


def test_generated_sequences_cross_every_threshold_both_ways():
    """The generated set is what the parity test claims: each bound crossed upwards and downwards."""
    crossings, alpha = set(), PluginConfig().ewma_alpha
    for rates in _rates().values():
        ewma = EWMA_START
        for rate in rates:
            rate = rate[0] / rate[1] if isinstance(rate, tuple) else rate
            new = (1 - alpha) * ewma + alpha * rate
            crossings |= {(b, "up") for b in (0.3, 0.5, 0.7) if ewma <= b < new}
            crossings |= {(b, "down") for b in (0.3, 0.5, 0.7) if new <= b < ewma}
            ewma = new
    assert crossings == {(b, d) for b in (0.3, 0.5, 0.7) for d in ("up", "down")}


def _is_pr_branch() -> bool:
    """The PR branch reads VLLM_SPEC_*; the older elastic-speculation branches VLLM_NWOR_*."""
    code = "import vllm.envs as e; print('VLLM_SPEC_ADAPTIVE_DRAFT_LENGTH' in e.environment_variables)"
    return _run_fork(["-c", code]).strip().splitlines()[-1] == "True"


@pytest.mark.fork
def test_fork_controller_and_nwor_choose_the_same_lengths():
    """PR branch: identical lengths at every step. Older branches: they take the second option whenever the
    EWMA is in (0.3, 0.5]; the PR branch (and nwor) only with 4+ options: every difference is exactly that."""
    seqs = [{**s, "with_ewma": True} for s in generated_sequences() + [s for s in recorded_sequences() if s["adaptive"]]]
    fork = replay_fork(seqs)
    pr_branch = _is_pr_branch()
    mismatched, explained = [], 0
    for seq, chosen in zip(seqs, fork):
        lengths, nwor = [c[0] for c in chosen], replay_nwor(seq)
        if lengths == nwor:
            continue
        band_rule = [0.3 < ewma <= 0.5 and len(seq["options"]) < 4 for (x, ewma), y in zip(chosen, nwor) if x != y]
        if not pr_branch and all(band_rule) and len(lengths) == len(nwor):
            explained += 1
            continue
        mismatched.append(f"{seq['name']}: {_first_difference(lengths, nwor)}")
    assert not mismatched, f"{len(mismatched)} of {len(seqs)} sequences differ:\n" + "\n".join(mismatched[:12])
    assert pr_branch or explained > 0, "an older branch whose controller agrees everywhere: the band rule changed"


@pytest.mark.fork
def test_replaying_a_recorded_trace_reproduces_the_fork_engine():
    """The replay model is the engine's: the fork's controller fed its recorded acceptance drafts what it drafted."""
    seqs = recorded_sequences()
    if not seqs:
        pytest.skip("no recorded fork traces under outputs/fork-cpu/parity* (scripts/fork_parity.py writes them)")
    if not _is_pr_branch():
        pytest.skip("the recorded traces are the PR branch's; this environment is an older branch")
    for seq, lengths in zip(seqs, replay_fork([s for s in seqs])):
        drafted = [e[1] for e in seq["events"] if e[0] == "choose"]
        expected = lengths if seq["adaptive"] else [seq["num_speculative_tokens"]] * len(drafted)
        assert drafted == expected, f"{seq['name']}: {_first_difference(drafted, expected)}"


@pytest.mark.fork
def test_fork_normalisation_and_defaults_are_the_ones_replayed():
    """The length clamp and default options the replay assumes are still what the fork's source says."""
    code = ("import inspect; from vllm.v1.spec_decode.eagle import EagleProposer as E; "
            "from vllm.config import speculative as s; "
            "print(inspect.getsource(E.propose)); print(inspect.getsource(s))")
    source = " ".join(_run_fork(["-c", code]).split())
    for fragment in ("if draft_length is None: draft_length = self.num_speculative_tokens",
                     "elif draft_length < 1: # Minimum draft length is 1 draft_length = 1",
                     "elif draft_length > self.num_speculative_tokens: # Cap at max configured length "
                     "draft_length = self.num_speculative_tokens",
                     "max(2, n // 2), # Half n, # Target min(8, n * 2), # Double (capped at 8)",
                     "sorted(set(self.draft_length_options))"):
        assert fragment in source, fragment
