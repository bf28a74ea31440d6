"""A run's files as one value that travels from a Ray worker to the driver, and their atomic publication there.

The worker executes a run into a private temporary folder and returns `{file name: bytes}`; the driver writes
each file atomically into its own outputs folder, the result JSON last, so nodes need no shared disk and a
reader never sees a JSON whose notebook is missing or a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nwor.errors import NworError

# What one run may send back (result, executed notebook, vLLM log, ncu reports): the object store holds it
# while it travels. App-range ncu reports are megabytes; a bundle past this is a run to look at, not to ship.
MAX_BUNDLE_BYTES = 1 << 30


class BundleTooLarge(NworError):
    """A run's files exceed MAX_BUNDLE_BYTES."""


def result_name(run_id: str) -> str:
    return f"{run_id}.json"


def run_files(folder: str | Path, run_id: str) -> list[Path]:
    """The run's files in `folder`: `<run_id>.*`, temporary `.`-files left out."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.name.startswith(f"{run_id}.") and not p.name.startswith("."))


def collect(folder: str | Path, run_id: str, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, bytes]:
    """The run's files in `folder` (`<run_id>.*`; temporary `.`-files left out) as `{name: bytes}`.

    Raises:
        BundleTooLarge: their total size exceeds `max_bytes` (the message names the largest files).
    """
    paths = run_files(folder, run_id)
    sizes = {p.name: p.stat().st_size for p in paths}
    if sum(sizes.values()) > max_bytes:
        largest = ", ".join(f"{n} ({s / 2**20:.0f} MiB)" for n, s in sorted(sizes.items(), key=lambda x: -x[1])[:3])
        raise BundleTooLarge(f"run {run_id}: its files total {sum(sizes.values()) / 2**20:.0f} MiB, over the "
                             f"{max_bytes / 2**20:.0f} MiB a Ray task may return: {largest}", run_id=run_id)
    return {p.name: p.read_bytes() for p in paths}


def with_result_field(files: dict[str, bytes], run_id: str, key: str, value) -> dict[str, bytes]:
    """`files` with `value` added under `key` in the run's result JSON (written by the notebook, not yet published).

    Raises:
        NworError: the bundle holds no readable result JSON.
    """
    name = result_name(run_id)
    try:
        doc = json.loads(files[name])
    except (KeyError, ValueError) as err:
        raise NworError(f"run {run_id}: no readable {name} among its files ({type(err).__name__})",
                        run_id=run_id) from None
    doc[key] = value
    return {**files, name: (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a torn one.

    Raises:
        OSError: the folder cannot be written (full, read-only); `path` is then unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are shared artifacts
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(files: dict[str, bytes], folder: str | Path, run_id: str) -> list[Path]:
    """Write each file atomically into `folder`, the result JSON last; returns the paths written.

    Raises:
        NworError: a name is not a plain file name of this run (a bundle must not write elsewhere).
        OSError: the folder stopped taking writes; the JSON is then not written.
    """
    bad = [n for n in files if Path(n).name != n or not n.startswith(f"{run_id}.") or n.startswith(".")]
    if bad:
        raise NworError(f"run {run_id}: refusing to publish {bad[0]!r}: not a file of this run", run_id=run_id)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    last = result_name(run_id)
    written = []
    for name in sorted(files, key=lambda n: n == last):  # False sorts first: the JSON goes last
        atomic_write_bytes(folder / name, files[name])
        written.append(folder / name)
    return written
