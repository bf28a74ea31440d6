"""Merge a multi-queue GPU session's outputs folders (one per GPU queue) into one artifacts folder: run logs
merged in time order, machine paths redacted, Nsight reports dropped, conflicts refused before DEST changes.

The merged tree is staged in a folder beside DEST (same filesystem). A new DEST is that folder renamed into
place (atomic). An existing DEST is merged into file by file (each an atomic rename), under a marker file that
says the merge is unfinished until the last file is in: an interrupted merge is finished by running the same
command again (files already in are identical, log lines already in are not added twice).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nwor.errors import NworError
from nwor.files import atomic_write_text

TEXT_SUFFIXES = {".json", ".jsonl", ".ipynb", ".log", ".txt", ".md", ".html", ".csv"}
MERGED_LOGS = {"experiment.log", "master_experiment.log"}  # every queue appends to its own copy
DROPPED_SUFFIX = ".ncu-rep"  # Nsight reports: tens of MB each; their *.ncu-summary.txt / *.ncu-kv-summary.txt stay
INCOMPLETE_MARK = ".collect-incomplete"

# An absolute path starts where no path character precedes it. Inside JSON strings a path may follow an
# escaped newline or tab (`...\n/root/x`), and a URL's `file://` prefix ends in a slash: both are starts too.
_START = r"(?:(?<![\w.~/-])|(?<=\\[nrt])|(?<=file://))"
_END = r"(?![\w.-])"  # a whole path component, not the head of a longer name (`/opt/torch/.venv2`)

# Machine paths and what they become, applied as ONE regex pass over the original text (never chained:
# replacing `/tmp/` twice in `/tmp/nwor-q0/tmp/x` is the bug this table exists to avoid). Only the prefix is
# replaced; the rest of the path stays as it was.
REDACTIONS = (
    # The GPU machine's temp folders (per-queue TMPDIR and compile caches): they name nothing on this machine.
    (r"/tmp/", "<machine-tmp>/"),
    # The GPU machine's home: the model cache (~/.cache/nwor/models) is at the same place under any home.
    (r"/root/", "~/"),
    # The image's own Python environment (vLLM, torch): fixed by the image, not by nwor.
    (r"/opt/torch/\.venv" + _END, "<image-venv>"),
)
LEFTOVER = re.compile(_START + r"/(?:root|tmp|work|home|opt)/")  # what the scan after writing reports
_STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]")


class CollectError(NworError):
    """The queue folders cannot be merged: bad input, or a file that differs between two sources."""


def redactor(repo_root: str | None):
    """A function `text -> text` applying `REDACTIONS` (and, first, the GPU machine's repository root, removed
    so that paths become repository-relative; the root alone becomes `.`) in one regex pass."""
    rules = list(REDACTIONS)
    if repo_root:
        # First: a repository under /tmp or /root must become relative, not `<machine-tmp>/...`.
        rules.insert(0, (re.escape(repo_root.rstrip("/")) + r"(?:/|" + _END + ")", None))
    pattern = re.compile(_START + "(?:" + "|".join(f"({p})" for p, _ in rules) + ")")

    def replace(match: re.Match) -> str:
        new = rules[match.lastindex - 1][1]
        if new is None:  # the repository root
            return "" if match.group().endswith("/") else "."
        return new

    return lambda text: pattern.sub(replace, text)


def infer_repo_root(queues: list[Path]) -> tuple[str | None, Counter]:
    """The GPU machine's repository root, read from the queues' own files: a queue extracted as
    `<x>/outputs/<session>/j0` was `<root>/outputs/<session>/j0` there, and its logs and notebooks name it
    (or a sibling queue: `<root>/outputs/<session>/` is what is looked for).
    Returns (the root when exactly one was found, else None; every root found with its count)."""
    found = Counter()
    for queue in queues:
        parts = queue.resolve().parts
        if "outputs" not in parts:
            continue
        top = len(parts) - 1 - parts[::-1].index("outputs")
        below = "/".join(parts[top:max(top + 2, len(parts) - 1)])  # outputs/<session>, not a bare outputs
        pattern = re.compile(_START + r"(/[^\s\"'<>:;,=\\]*?)/" + re.escape(below) + _END)
        for path in _files(queue):
            if path.suffix in TEXT_SUFFIXES:
                found.update(pattern.findall(_read_text(path)))
    return (next(iter(found)) if len(found) == 1 else None), found


def merge_logs(texts: list[str], existing: str = "") -> str:
    """One run log from several: entries (a `[YYYY-MM-DD HH:MM:SS]` line and any unstamped lines after it) in
    timestamp order, stable for equal stamps (existing first, then `texts` in order). Entries already in
    `existing` are not added again, so merging the same queues twice changes nothing."""
    def entries(text: str) -> list[tuple[str, str]]:
        out: list[list[str]] = []
        for line in _lines(text):
            stamp = _STAMP.match(line)
            if stamp or not out:
                out.append([stamp.group(1) if stamp else "", line])
            else:
                out[-1][1] += line
        return [tuple(e) for e in out]

    old = entries(existing)
    seen = Counter(old)
    merged = list(old)
    for text in texts:
        for entry in entries(text):
            if seen[entry]:
                seen[entry] -= 1
            else:
                merged.append(entry)
    return "".join(block for _, block in sorted(merged, key=lambda e: e[0]))


def is_result_json(rel: Path) -> bool:
    """Whether `rel` (below a queue folder) is a run's result: `<profile>/<grid>/<run_id>.json`."""
    return len(rel.parts) == 3 and rel.suffix == ".json" and ".ncu" not in rel.name


def check_inputs(dest: Path, queues: list[Path]) -> None:
    """Raise unless every queue folder exists, none repeats or holds another, and DEST is a folder (or absent)
    outside every queue folder and holding none of them.

    Raises:
        CollectError: the first problem found, as one line.
    """
    if not queues:
        raise CollectError("no queue folders given")
    resolved, where = [q.resolve() for q in queues], dest.resolve()
    for queue, path in zip(queues, resolved):
        if not path.is_dir():
            raise CollectError(f"queue folder {queue} does not exist or is not a folder")
        if where == path or path in where.parents:
            raise CollectError(f"DEST {dest} is inside the queue folder {queue}")
        if where in path.parents:
            raise CollectError(f"queue folder {queue} is inside DEST {dest}")
        for other in resolved:
            if other != path and other in path.parents:
                raise CollectError(f"queue folder {queue} is inside another queue folder")
    if len(set(resolved)) < len(resolved):
        raise CollectError("a queue folder is given twice")
    if dest.exists() and not dest.is_dir():
        raise CollectError(f"DEST {dest} is a file, not a folder")


@dataclass
class Collected:
    """What a collect did: counts for the summary, the runs per `<profile>/<grid>`, leftovers in DEST."""
    files: Counter = field(default_factory=Counter)  # files written per queue (as given)
    identical: int = 0  # files whose identical copy came from an earlier queue or was already in DEST
    logs: int = 0  # merged run logs written
    dropped: int = 0  # *.ncu-rep files left out
    hidden: int = 0  # dot files left out (a stale `.nwor.lock`, an atomic write's leftover)
    runs: Counter = field(default_factory=Counter)
    new_dest: bool = True
    leftovers: list[str] = field(default_factory=list)  # `path:line: match` still naming a machine path


def collect(dest: Path, queues: list[Path], repo_root: str | None) -> Collected:
    """Merge `queues` into `dest` (see the module docstring), redacting with `redactor(repo_root)`.

    Raises:
        CollectError: bad input, a conflict (nothing in DEST changed), or a JSON file redaction would break.
        OSError: a file cannot be read or written.
    """
    check_inputs(dest, queues)
    label = {q: str(q) for q in queues}
    mark = dest / INCOMPLETE_MARK
    if mark.exists() and mark.read_text().split("\n") != [str(q.resolve()) for q in queues] + [""]:
        raise CollectError(f"{dest} is half-merged by an interrupted collect of {mark.read_text().split()}: "
                           "run that command again to finish it")
    done = Collected(new_dest=not dest.exists())
    redact = redactor(repo_root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.collect-", dir=dest.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; a new DEST is this folder renamed, and artifacts are shared
    try:
        staged: dict[Path, tuple[str, str]] = {}  # rel -> (digest, source)
        logs: dict[Path, list[str]] = {}
        for queue in queues:
            for path in _files(queue):
                rel = path.relative_to(queue)
                if any(part.startswith(".") for part in rel.parts):
                    done.hidden += 1
                elif path.name.endswith(DROPPED_SUFFIX):
                    done.dropped += 1
                elif path.name in MERGED_LOGS:
                    logs.setdefault(rel, []).append(redact(_read_text(path)))
                else:
                    data = _redacted(path, redact)
                    digest = hashlib.sha256(data).hexdigest()
                    if rel in staged and staged[rel][0] != digest:
                        raise _conflict(rel, staged[rel][1], label[queue], dest)
                    if rel in staged:
                        done.identical += 1
                        continue
                    staged[rel] = (digest, label[queue])
                    done.runs[str(rel.parent)] += is_result_json(rel)
                    _write(staging / rel, data, rel, dest)
        for rel, (digest, source) in staged.items():  # against what DEST holds already: all before any move
            target = dest / rel
            if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
                (staging / rel).unlink()
                done.identical += 1
            elif target.exists() or any(p.is_file() for p in target.parents if dest in p.parents):
                raise _conflict(rel, source, f"{dest} (already there)", dest)
            else:
                done.files[source] += 1
        for rel, texts in logs.items():
            existing = _read_text(dest / rel) if (dest / rel).is_file() else ""
            merged = merge_logs(texts, existing)
            if merged != existing:
                _write(staging / rel, merged.encode("utf-8", "surrogateescape"), rel, dest)
                done.logs += 1
        _move_into_place(staging, dest, queues)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    done.runs = Counter({k: n for k, n in done.runs.items() if n})
    done.leftovers = list(scan(dest))
    return done


def scan(folder: Path):
    """Yield `path:line: match` for each absolute /root, /tmp, /work, /home or /opt path left in a text file."""
    for path in _files(folder):
        if path.suffix in TEXT_SUFFIXES:
            for number, line in enumerate(_lines(_read_text(path)), 1):
                for match in LEFTOVER.finditer(line):
                    yield f"{path}:{number}: {line[match.start():match.start() + 60].split()[0]}"


def _move_into_place(staging: Path, dest: Path, queues: list[Path]) -> None:
    with _interrupt_deferred():
        if not dest.exists():
            os.rename(staging, dest)
            return
        atomic_write_text(dest / INCOMPLETE_MARK, "".join(f"{q.resolve()}\n" for q in queues))
        for path in _files(staging):
            target = dest / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        (dest / INCOMPLETE_MARK).unlink()


@contextmanager
def _interrupt_deferred():
    """Hold Ctrl-C while files move into DEST (a few renames), then raise it."""
    caught, main = [], threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True)) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _files(folder: Path):
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            yield Path(root, name)


def _read_text(path: Path) -> str:
    # Bytes as they are: no newline translation (tqdm's `\r` progress lines stay), non-UTF-8 bytes kept.
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _lines(text: str) -> list[str]:
    """Lines ending in `\n` (the last one given one): split at `\n` only, not at `\r` as splitlines() does."""
    return [line + "\n" for line in text.removesuffix("\n").split("\n")] if text else []


def _redacted(path: Path, redact) -> bytes:
    if path.suffix not in TEXT_SUFFIXES:
        return path.read_bytes()
    original = _read_text(path)
    text = redact(original)
    if path.suffix in (".json", ".ipynb") and _parses(original) and not _parses(text):
        raise CollectError(f"{path}: redaction would make this JSON file invalid; nothing was written")
    return text.encode("utf-8", "surrogateescape")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _write(path: Path, data: bytes, rel: Path, dest: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except (NotADirectoryError, IsADirectoryError, FileExistsError):
        raise CollectError(f"conflict: {rel} is a file in one queue folder and a folder in another; "
                           f"nothing was written to {dest}") from None


def _conflict(rel: Path, first: str, second: str, dest: Path) -> CollectError:
    return CollectError(f"conflict: {rel} differs between {first} and {second}; nothing was written to {dest}")
