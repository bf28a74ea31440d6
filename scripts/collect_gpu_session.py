"""Merge a multi-queue GPU session (one outputs folder per GPU queue) into one artifacts folder, safely.

    python scripts/collect_gpu_session.py DEST QUEUE_DIR [QUEUE_DIR ...] [--repo-root PATH] [--strict]

Each queue folder's files land at the same relative path below DEST (`<profile>/<grid>/<run_id>.*`);
experiment.log / master_experiment.log are merged in time order; *.ncu-rep are left out; machine paths are
redacted (nwor.collect.REDACTIONS, and the GPU machine's repository root made relative). A file that differs
between two queues, or from DEST's copy, stops everything before DEST changes. The logic is nwor/collect.py.
Exit 0 when done, 1 with --strict when machine paths remain in DEST, 2 on bad input or a conflict.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nwor.collect import INCOMPLETE_MARK, CollectError, collect, infer_repo_root
from nwor.files import describe_os_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the artifacts folder, e.g. outputs/gpu-h100-protocol/session6")
    parser.add_argument("queues", type=Path, nargs="*", help="the queues' outputs folders (e.g. .../j0 ... j3)")
    parser.add_argument("--repo-root", help="the repository root on the GPU machine, made relative in every "
                                            "text file (default: read from the queues' files when they name one)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when machine paths remain in DEST")
    args = parser.parse_args(argv)
    try:
        if args.repo_root is not None and not args.repo_root.startswith("/"):
            raise CollectError(f"--repo-root {args.repo_root!r} is not an absolute path")
        root, how = args.repo_root, "--repo-root"
        if root is None and args.queues and all(q.is_dir() for q in args.queues):
            root, found = infer_repo_root(args.queues)
            how = (f"read from {found[root]} mentions in the queues' files" if root else
                   f"several found ({', '.join(found)}): pass --repo-root" if found else "none found")
        done = collect(args.dest, args.queues, root)
    except CollectError as err:
        print(f"collect_gpu_session: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"collect_gpu_session: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"collect_gpu_session: interrupted: DEST is as before, complete, or marked half-merged "
              f"({INCOMPLETE_MARK}: run the same command again)", file=sys.stderr)
        return 130
    print(f"collected {len(args.queues)} queue folders into {args.dest} "
          f"({'new folder' if done.new_dest else 'merged into the existing folder'})")
    print(f"  repository root on the GPU machine: {root or 'none'} ({how})")
    for queue in args.queues:
        print(f"  {queue}: {done.files[str(queue)]} files merged")
    print(f"  identical copies skipped: {done.identical}; logs merged: {done.logs}; "
          f"ncu reports dropped (*.ncu-rep): {done.dropped}; dot files left out: {done.hidden}")
    for where, runs in sorted(done.runs.items()):
        print(f"  runs (result JSON) in {where}: {runs}")
    for leftover in done.leftovers:
        print(f"warning: machine path left: {leftover}", file=sys.stderr)
    if done.leftovers:
        print(f"  {len(done.leftovers)} machine paths left in {args.dest} (listed on stderr)")
    return 1 if args.strict and done.leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
