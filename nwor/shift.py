"""A shifting workload within one run: the measured rounds visit the spec's `prompt_shift` parts in order.

Round r of M measured rounds runs part floor(r * P / M) of P parts (equal shares, in order), with that
part's prompt set and temperature; warm-up runs part 0, so every arm enters the measured rounds with its
controller settled on the first workload (each arm its own controller: nwor.instances keeps it per arm).
A run without `prompt_shift` has one part: the spec's own prompt set and temperature.
"""
from __future__ import annotations

from dataclasses import replace

from nwor.config import RunSpec
from nwor.prompts import prompts_for


def parts(spec: RunSpec) -> list[dict]:
    """The workload parts, each {"prompt_set", "temperature"} resolved against the spec."""
    if not spec.prompt_shift:
        return [{"prompt_set": spec.prompt_set, "temperature": spec.temperature}]
    return [{"prompt_set": p["prompt_set"], "temperature": p.get("temperature", spec.temperature)}
            for p in spec.prompt_shift]


def part_of_round(spec: RunSpec, measured_round: int) -> int:
    """Index of the part measured round `measured_round` runs (0 for warm-up, which passes -1)."""
    if measured_round < 0:
        return 0
    return measured_round * len(parts(spec)) // spec.measured_batches


def part_spec(spec: RunSpec, part: int) -> RunSpec:
    """The spec a batch of part `part` runs with (its prompt set and temperature)."""
    if not spec.prompt_shift:
        return spec
    chosen = parts(spec)[part]
    return replace(spec, prompt_set=chosen["prompt_set"], temperature=chosen["temperature"], prompt_shift=())


def load_part_prompts(spec: RunSpec) -> list[list[str]]:
    """Each part's prompts, filtered and shuffled as the spec says.

    Raises:
        ConfigError: a part's prompt set cannot be loaded.
    """
    return [prompts_for(part_spec(spec, k)) for k in range(len(parts(spec)))]
