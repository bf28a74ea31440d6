"""The experiment grids as data: load parameters/*.yaml, apply a profile, expand into RunSpecs."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from nwor.config import SPEC_FIELDS, RunSpec
from nwor.env_overrides import apply_env_overrides
from nwor.errors import ConfigError

PARAMETERS_DIR = Path(__file__).resolve().parent.parent / "parameters"
# The seed's three grids, then the calibration (A/A, plugin overhead) that every profile measures too.
GRIDS = ("adaptive_grid", "early_exit_grid", "oneoff_scenarios", "calibration_grid")
GRID_KEYS = {"grid", "run_id", "fixed", "axes", "workloads", "baseline"}
# `baseline: features_off`: every run with a feature on also measures arm "baseline" with those features off.
BASELINES = ("features_off",)
# Grids that run only when named (`nwor run serving_grid`), never under "all": each serving run starts a
# server per arm and instance, which would more than double the smoke suite.
# controls_grid: ~10 engine groups per workload (issue 14); controller_grid: GPU-only synthetic-acceptance runs
OPT_IN_GRIDS = ("serving_grid", "controls_grid", "controller_grid")
PROFILE_KEYS = {"description", "set", "scale", "cap", "prompt_sets", "estimate_s_per_run"}
# Keys a workload may carry besides RunSpec fields: `id` feeds the run-id template, `note` documents.
WORKLOAD_EXTRA_KEYS = {"id", "note", "suffix"}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    set: dict
    scale: dict
    cap: dict
    prompt_sets: dict
    estimate_s_per_run: float | None


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}:{line} malformed YAML ({getattr(err, 'problem', err)})") from None


def _check_keys(mapping, allowed: set, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def load_defaults(parameters_dir: Path = PARAMETERS_DIR) -> dict:
    path = parameters_dir / "defaults.yaml"
    data = _load_yaml(path) or {}
    _check_keys(data, set(SPEC_FIELDS), str(path))
    return data


def load_profile(name: str, parameters_dir: Path = PARAMETERS_DIR) -> Profile:
    """Raises ConfigError for an unknown profile or key."""
    path = parameters_dir / "profiles.yaml"
    profiles = _load_yaml(path) or {}
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r} (known: {', '.join(profiles)})")
    data = profiles[name]
    _check_keys(data, PROFILE_KEYS, f"{path}: {name}")
    for part in ("set", "scale", "cap"):
        _check_keys(data.get(part) or {}, set(SPEC_FIELDS), f"{path}: {name}.{part}")
    return Profile(name, data.get("description", ""), data.get("set") or {}, data.get("scale") or {},
                   data.get("cap") or {}, data.get("prompt_sets") or {}, data.get("estimate_s_per_run"))


def load_grid(name: str, parameters_dir: Path = PARAMETERS_DIR) -> dict:
    """Raises ConfigError for an unknown grid, malformed YAML or an unknown key."""
    if name not in GRIDS + OPT_IN_GRIDS:
        raise ConfigError(f"unknown grid {name!r} (known: {', '.join(GRIDS + OPT_IN_GRIDS)})")
    path = parameters_dir / f"{name}.yaml"
    data = _load_yaml(path)
    _check_keys(data, GRID_KEYS, str(path))
    if data.get("grid") != name:
        raise ConfigError(f"{path}: 'grid' must be {name!r}")
    _check_keys(data.get("fixed") or {}, set(SPEC_FIELDS), f"{path}: fixed")
    _check_keys(data.get("axes") or {}, set(SPEC_FIELDS), f"{path}: axes")
    for i, workload in enumerate(data.get("workloads") or []):
        _check_keys(workload, set(SPEC_FIELDS) | WORKLOAD_EXTRA_KEYS, f"{path}: workloads[{i}]")
    if not data.get("workloads"):
        raise ConfigError(f"{path}: no workloads")
    if data.get("baseline") not in (None, *BASELINES):
        raise ConfigError(f"{path}: baseline must be one of {', '.join(BASELINES)}, got {data['baseline']!r}")
    return data


def baseline_arm(values: dict) -> dict | None:
    """Arm "baseline" of a run with features on: the same run with each feature that is on turned off."""
    off = {}
    if values.get("adaptive_draft_length"):
        off["adaptive_draft_length"] = False
    if (values.get("confidence_threshold") or 0) > 0:
        off["confidence_threshold"] = 0.0
    return {"name": "baseline", **off} if off else None


def run_id(template: str, values: dict) -> str:
    """The one function that names runs: the grid's template filled with the grid's own values."""
    try:
        return template.format(**values)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"run_id template {template!r}: {err}") from None


def _apply_profile(values: dict, profile: Profile) -> dict:
    out = {**values, **profile.set}
    for name, factor in profile.scale.items():
        if name in out:
            out[name] = max(1, math.ceil(out[name] * factor))
    for name, bound in profile.cap.items():
        if name in out:
            out[name] = min(out[name], bound)
    if out.get("prompt_set"):
        out["prompt_set"] = _prompt_source(out["prompt_set"], profile)
    if out.get("prompt_shift"):  # a shifting workload's parts name prompt sets the same way
        out["prompt_shift"] = [{**part, "prompt_set": _prompt_source(part["prompt_set"], profile)}
                               if isinstance(part, dict) and isinstance(part.get("prompt_set"), str) else part
                               for part in out["prompt_shift"]]
    return out


def _prompt_source(prompt_set: str, profile: Profile) -> str:
    """A grid's prompt-set name (chat, code, creative) as the profile's source; sources pass through."""
    if ":" in prompt_set or prompt_set.startswith(("/", ".")):
        return prompt_set
    if prompt_set not in profile.prompt_sets:
        raise ConfigError(f"profile {profile.name}: no source for prompt set {prompt_set!r}")
    return profile.prompt_sets[prompt_set]


def expand(name: str, profile: Profile, *, overrides: dict | None = None,
           parameters_dir: Path = PARAMETERS_DIR) -> list[RunSpec]:
    """Every run of a grid under a profile, in the grid's order.

    Raises:
        ConfigError: bad YAML, an out-of-range value (named), or duplicate run ids.
    """
    grid = load_grid(name, parameters_dir)
    base = {**load_defaults(parameters_dir), **(grid.get("fixed") or {})}
    axes = grid.get("axes") or {}
    specs, seen = [], set()
    for workload in grid["workloads"]:
        for combo in itertools.product(*axes.values()):
            nominal = {**base, **workload, **dict(zip(axes, combo))}
            rid = run_id(grid["run_id"], nominal)
            if rid in seen:
                raise ConfigError(f"{name}: duplicate run id {rid}")
            seen.add(rid)
            values = {k: v for k, v in nominal.items() if k not in WORKLOAD_EXTRA_KEYS}
            values = apply_env_overrides(_apply_profile(values, profile))
            values.update(overrides or {})
            if grid.get("baseline") == "features_off" and not values.get("arms") and baseline_arm(values):
                values["arms"] = [baseline_arm(values)]
            try:
                specs.append(RunSpec(**{**values, "run_id": rid, "grid": name, "profile": profile.name}))
            except ConfigError as err:
                raise ConfigError(f"{name}/{rid}: {err}") from None
    return specs


def expand_all(grids: list[str], profile_name: str, **kwargs) -> list[RunSpec]:
    """Runs of several grids ('all' = every grid) under one profile."""
    profile = load_profile(profile_name, kwargs.get("parameters_dir", PARAMETERS_DIR))
    names = list(GRIDS) if not grids or grids == ["all"] else grids
    return [spec for name in names for spec in expand(name, profile, **kwargs)]


def planned_run_ids(profile_name: str, parameters_dir: Path = PARAMETERS_DIR) -> dict[str, list[str]] | None:
    """grid -> run ids a profile plans (for reports that must show runs with no result); None if unknown."""
    try:
        specs = expand_all(["all"], profile_name, parameters_dir=parameters_dir)
    except ConfigError:
        return None
    planned: dict[str, list[str]] = {}
    for spec in specs:
        planned.setdefault(spec.grid, []).append(spec.run_id)
    return planned
