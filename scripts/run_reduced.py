"""Run one grid run with a reduced design (fewer arms, engines or batches) where the full one does not fit the
device time at hand. The result keeps the grid's run id; its `spec` records the cut, so `nwor status` calls it
stale against the full grid, as it should.

    python scripts/run_reduced.py GRID RUN_ID --profile gpu-smoke --outputs outputs \
        [--arms nospec,k2,k5] [--set engine_instances=2 --set measured_batches=3]

--arms keeps only the named extra arms of the run (arm "run" always stays; the baseline arm the grid adds is
kept unless --arms leaves it out by name). --set KEY=VALUE replaces a RunSpec field (VALUE read as YAML).
Exit 0 when the run is ok, 1 when it failed or was refused (its record is written), 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import yaml

from nwor.errors import NworError, RunFailed
from nwor.execute import run_notebook
from nwor.grid import expand, load_profile


def reduced_spec(grid: str, run_id: str, profile: str, arms: list[str] | None, sets: list[str]):
    """The grid's spec for `run_id` under `profile`, with its arms cut to `arms` and the `sets` applied.

    Raises:
        NworError: an unknown grid, profile, run id, arm name or field, or a value RunSpec refuses.
    """
    specs = {spec.run_id: spec for spec in expand(grid, load_profile(profile))}
    if run_id not in specs:
        raise NworError(f"{grid} has no run {run_id!r} under profile {profile!r}")
    spec = specs[run_id]
    changes = {}
    if arms is not None:
        known = {arm["name"] for arm in spec.arms}
        unknown = sorted(set(arms) - known)
        if unknown:
            raise NworError(f"{run_id} has no arm {', '.join(unknown)} (its arms: {', '.join(sorted(known))})")
        changes["arms"] = tuple(arm for arm in spec.arms if arm["name"] in arms)
    fields = {field.name for field in dataclasses.fields(spec)}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise NworError(f"--set {item!r}: expected FIELD=VALUE with a RunSpec field")
        changes[key] = yaml.safe_load(value)
    try:
        return dataclasses.replace(spec, **changes)
    except (TypeError, ValueError) as err:
        raise NworError(f"{run_id}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("run_id")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--outputs", default=None, help="outputs folder (default: the project's outputs/)")
    parser.add_argument("--arms", default=None, help="comma-separated extra arms to keep")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    arms = None if args.arms is None else [name for name in args.arms.split(",") if name]
    try:
        spec = reduced_spec(args.grid, args.run_id, args.profile, arms, args.sets)
    except NworError as err:
        print(f"run_reduced: error: {err}", file=sys.stderr)
        return 2
    try:
        result = run_notebook(spec, root=args.outputs)
    except RunFailed as err:
        print(f"run_reduced: {spec.run_id} failed: {err}", file=sys.stderr)
        return 1
    status = result.get("status")
    print(f"run_reduced: {spec.run_id} {status}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
