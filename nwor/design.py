"""A run's measurement design: its arms, which arms share an engine, the balanced order, the warm-up rule.

Arms whose settings differ only in what nwor's plugin reconfigures between batches (PLUGIN_FIELDS) share
one engine and alternate by batch; arms that differ in anything the engine fixes at start (the plugin
loaded or not, native fork switches, draft tokens, models) get separate engine instances, interleaved.
Both orders are balanced: each round visits every item once, a seeded permutation, then its reverse
(ABBA for two items).
"""
from __future__ import annotations

import random
import statistics
import zlib
from dataclasses import dataclass, fields, replace

from nwor.config import SPEC_FIELDS, RunSpec
from nwor.errors import ConfigError
from nwor.plugin import PluginConfig

# What nwor.plugin.configure changes in a running engine: PluginConfig's fields that are also RunSpec fields
# (adaptive_draft_length, draft_length_options, confidence_threshold; a new controller knob joins by name).
PLUGIN_FIELDS = tuple(f.name for f in fields(PluginConfig) if f.name in SPEC_FIELDS)
RUN_ARM = "run"


@dataclass(frozen=True)
class Arm:
    name: str
    spec: RunSpec  # the run's spec with the arm's overrides (arms cleared)
    overrides: dict
    load_plugin: bool | None  # None: as the engine group needs; False: stock vLLM; True: loaded even if off
    label: str | None = None

    @property
    def features_on(self) -> bool:
        return self.spec.adaptive_draft_length or self.spec.confidence_threshold > 0

    def to_dict(self) -> dict:
        out = {"name": self.name, **self.overrides}
        if self.load_plugin is not None:
            out["load_plugin"] = self.load_plugin
        if self.label is not None:
            out["label"] = self.label
        return out


def plugin_config(spec: RunSpec) -> PluginConfig:
    """The plugin configuration of an arm: its values of PLUGIN_FIELDS."""
    return PluginConfig(**{name: getattr(spec, name) for name in PLUGIN_FIELDS})


def arms_of(spec: RunSpec) -> list[Arm]:
    """Arm "run" (the spec itself) first, then the spec's extra arms in their listed order.

    Raises:
        ConfigError: an arm asks for stock vLLM (load_plugin false) with a feature on.
    """
    arms = [Arm(RUN_ARM, replace(spec, arms=()), {}, None)]
    for raw in spec.arms:
        overrides = {k: v for k, v in raw.items() if k in SPEC_FIELDS}
        arm = Arm(raw["name"], replace(spec, arms=(), **overrides), overrides, raw.get("load_plugin"), raw.get("label"))
        if arm.load_plugin is False and arm.features_on:
            raise ConfigError(f"run {spec.run_id}: arm {arm.name!r} sets load_plugin false with a feature on",
                              run_id=spec.run_id)
        arms.append(arm)
    return arms


def engine_key(arm: Arm, native_switches: dict) -> tuple:
    """What the engine fixes at start for this arm: every non-plugin field, stock or not, native switches."""
    fields = {k: v for k, v in arm.spec.to_dict().items() if k not in PLUGIN_FIELDS and k not in ("run_id",)}
    stock = "stock" if arm.load_plugin is False else "plugin-capable"
    return (repr(sorted(fields.items())), stock, repr(sorted(native_switches.items())))


def group_arms(arms: list[Arm], native_switches: dict[str, dict], arm_design: str) -> list[list[str]]:
    """Arm names per engine group, groups in first-appearance order.

    `native_switches[name]` are the arm's engine-start switches other than the plugin's (fork variables,
    speculative-config fields): arms whose native switches differ cannot share an engine.
    """
    if arm_design == "engines":
        return [[a.name] for a in arms]
    groups: dict[tuple, list[str]] = {}
    for arm in arms:
        groups.setdefault(engine_key(arm, native_switches.get(arm.name, {})), []).append(arm.name)
    return list(groups.values())


def design_name(groups: list[list[str]]) -> str:
    if len(groups) == 1:
        return "single-arm" if len(groups[0]) == 1 else "within-engine"
    return "mixed" if any(len(g) > 1 for g in groups) else "engines-interleaved"


def design_seed(spec: RunSpec) -> int:
    """Seed of the run's orders: the spec's seed and its run id, so runs differ but each is reproducible."""
    return (spec.seed * 1_000_003 + zlib.crc32(spec.run_id.encode())) % 2**31


def balanced_rounds(items: list, rounds: int, rng: random.Random) -> list[list]:
    """`rounds` rounds, each every item once: a seeded permutation, then its reverse, and so on (ABBA)."""
    out: list[list] = []
    for r in range(rounds):
        out.append(list(reversed(out[-1])) if r % 2 else rng.sample(list(items), len(items)))
    return out


def instance_order(groups: list[list[str]], instances: int, rng: random.Random) -> list[int]:
    """Group index of each engine instance in start order: `instances` balanced rounds over the groups."""
    return [g for rnd in balanced_rounds(list(range(len(groups))), instances, rng) for g in rnd]


@dataclass(frozen=True)
class WarmupRule:
    """Warm up until stable: at least `min_batches`, and the last `window` batches of every arm within
    `tolerance` ((max - min) / median); stop at `max_batches` regardless (ended_by "cap").
    """

    min_batches: int
    max_batches: int
    window: int
    tolerance: float

    @classmethod
    def of(cls, spec: RunSpec) -> "WarmupRule":
        return cls(spec.warmup_batches, spec.warmup_max_batches, spec.warmup_window, spec.warmup_tolerance)

    def to_dict(self) -> dict:
        return {"min_batches": self.min_batches, "max_batches": self.max_batches, "window": self.window,
                "tolerance": self.tolerance, "spread": "(max - min) / median of each arm's last `window` batches",
                "cap": "max_batches"}

    def verdict(self, series: list[float], arms: list[str]) -> str | None:
        """"stable" or "cap" when warm-up may stop after these batches (one arm name per latency), else None."""
        n = len(series)
        if n >= self.max_batches:
            return "stable" if n >= self.min_batches and self._stable(series, arms) else "cap"
        if n >= self.min_batches and self._stable(series, arms):
            return "stable"
        return None

    def _stable(self, series: list[float], arms: list[str]) -> bool:
        if self.min_batches == 0 and not series:
            return True  # nothing asked for: a zero-minimum rule with no batches is trivially done
        for name in dict.fromkeys(arms):
            last = [s for s, a in zip(series, arms) if a == name][-self.window:]
            if len(last) < self.window or relative_spread(last) > self.tolerance:
                return False
        return bool(series)


def relative_spread(values: list[float]) -> float:
    """(max - min) / median; infinite when the median is not positive."""
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median > 0 else float("inf")
