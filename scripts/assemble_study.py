"""Assemble one study folder from several GPU sessions' artifacts folders, for one report over all of them.

    python scripts/assemble_study.py DEST --session LABEL=FOLDER [--session ...] --profile gpu-smoke [--profile ...]

Sessions in time order: a run measured in two sessions comes from the later one. Each result names its
machine (a result without `env.machine_label` gets its session's label), and calibration runs are kept for
every session, as `<run_id>__<LABEL>`, so the report calibrates each comparison with its own machine's A/A
band. DEST must not exist (it is rebuilt, never edited); DEST/manifest.json lists every run's source. The
logic is nwor/study.py. Then: `nwor report --profile PROFILE --outputs DEST`. Exit 0 when done, 2 on bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nwor.study import MANIFEST, StudyError, assemble, parse_session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the study folder to create, e.g. outputs/gpu-h100-study")
    parser.add_argument("--session", action="append", required=True, metavar="LABEL=FOLDER",
                        help="a session's label (its machine) and artifacts folder; repeat, oldest first")
    parser.add_argument("--profile", action="append", required=True, help="a profile to take; repeat for more")
    args = parser.parse_args(argv)
    try:
        manifest = assemble(args.dest, [parse_session(s) for s in args.session], args.profile)
    except StudyError as err:
        print(f"assemble_study: error: {err}", file=sys.stderr)
        return 2
    runs = manifest["runs"]
    for session in manifest["sessions"]:
        mine = [r for r in runs if r["session"] == session["label"]]
        print(f"{session['label']}: {len(mine)} runs ({sum(r['status'] == 'ok' for r in mine)} ok)")
    for r in runs:
        if r["replaced_sessions"]:
            print(f"  {r['grid']}/{r['run_id']}: from {r['session']}, replacing {', '.join(r['replaced_sessions'])}")
    print(f"{len(runs)} runs in {args.dest}; sources in {args.dest / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
