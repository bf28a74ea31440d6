"""One outputs folder for a study measured over several GPU sessions, each its own machine, for one report.

A 30-minute device session measures a few runs, so the study spans sessions, and numbers compare only within
a machine. The assembly keeps that visible:
- every result names its machine (`env.machine_label`); one without a label gets its session's, and
  `assembled.machine_label_added` says so;
- calibration runs (A/A, plugin cost) characterise their machine, so each session's are kept, under
  `<run_id>__<session>`; nwor.arms then calibrates each comparison with its own machine's A/A band;
- any other run measured in two sessions is taken from the later session given; the manifest lists the
  one it replaced.
The result JSON gains an `assembled` block: where it came from and the run id it had there. The session
folders stay the record; the assembled folder is rebuilt from them, never edited. It is staged beside DEST
and renamed into place at the end, so no half-assembled folder exists.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nwor.bundle import result_name, run_files
from nwor.collect import is_result_json
from nwor.errors import NworError, SchemaError
from nwor.files import atomic_write_text
from nwor.paths import SESSION_SEPARATOR
from nwor.provenance import display_path
from nwor.results import read_result

CALIBRATION_GRID = "calibration_grid"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MANIFEST = "manifest.json"
RULE = ("runs without a machine label get their session's; calibration runs are kept per session as "
        "<run_id>__<session>; another run measured in two sessions comes from the later session given")


class StudyError(NworError):
    """The sessions cannot be assembled: bad input, or an unreadable result."""


@dataclass(frozen=True)
class Session:
    label: str  # the session's machine, e.g. h100-session7
    folder: Path  # its outputs folder: <profile>/<grid>/<run_id>.json


def parse_session(text: str) -> Session:
    """`LABEL=FOLDER` as the command line gives it.

    Raises:
        StudyError: no `=`, a label that is not a plain name, or a folder that does not exist.
    """
    label, sep, folder = text.partition("=")
    if not sep or not LABEL.match(label):
        raise StudyError(f"session {text!r}: expected LABEL=FOLDER with LABEL of letters, digits, '.', '_', '-'")
    if not Path(folder).is_dir():
        raise StudyError(f"session {label}: no folder {folder}")
    return Session(label, Path(folder))


def _results(session: Session, profiles: list[str]):
    """(profile, grid, run_id, path) of every result JSON of `profiles` in the session's folder."""
    for profile in profiles:
        for path in sorted((session.folder / profile).glob("*/*.json")):
            if is_result_json(path.relative_to(session.folder)) and not path.name.startswith("."):
                yield profile, path.parent.name, path.stem, path


def _read(path: Path) -> dict:
    try:
        return read_result(path)
    except SchemaError as err:
        raise StudyError(f"not a readable result: {err}") from None


def plan(sessions: list[Session], profiles: list[str]) -> dict:
    """What goes where: {(profile, grid, new run id): entry}, later sessions replacing earlier ones' runs.

    Raises:
        StudyError: two sessions share a label, or a result cannot be read.
    """
    labels = [s.label for s in sessions]
    if len(set(labels)) != len(labels):
        raise StudyError(f"session labels must differ: {', '.join(labels)}")
    chosen: dict = {}
    for session in sessions:
        for profile, grid, run_id, path in _results(session, profiles):
            doc = _read(path)
            new_id = f"{run_id}{SESSION_SEPARATOR}{session.label}" if grid == CALIBRATION_GRID else run_id
            key = (profile, grid, new_id)
            replaced = chosen.get(key)
            chosen[key] = {"session": session, "path": path, "doc": doc, "run_id": run_id, "new_id": new_id,
                           "replaced": (replaced["replaced"] + [replaced["session"].label]) if replaced else []}
    return chosen


def _assembled_doc(entry: dict) -> dict:
    doc, session = dict(entry["doc"]), entry["session"]
    env = dict(doc.get("env") or {})
    added = not env.get("machine_label")
    if added:
        env["machine_label"] = session.label
    doc["env"], doc["run_id"] = env, entry["new_id"]
    doc["assembled"] = {"session": session.label, "run_id": entry["run_id"], "machine_label_added": added,
                        "replaced_sessions": entry["replaced"]}
    return doc


def assemble(dest: Path, sessions: list[Session], profiles: list[str]) -> dict:
    """Build DEST from the sessions' results of `profiles`; the manifest it wrote.

    Raises:
        StudyError: DEST exists, nothing to assemble, or bad sessions (see `plan`).
    """
    dest = Path(dest)
    if dest.exists():
        raise StudyError(f"{dest} exists: the study folder is rebuilt from its sessions, remove it first")
    chosen = plan(sessions, profiles)
    if not chosen:
        raise StudyError(f"no results of profile(s) {', '.join(profiles)} in the sessions given")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.assembling-", dir=dest.parent))
    try:
        runs = []
        for (profile, grid, new_id), entry in sorted(chosen.items()):
            target = staging / profile / grid
            target.mkdir(parents=True, exist_ok=True)
            for path in run_files(entry["path"].parent, entry["run_id"]):
                if path.name == result_name(entry["run_id"]):
                    continue  # written last, with its new fields
                shutil.copy2(path, target / (new_id + path.name[len(entry["run_id"]):]))
            doc = _assembled_doc(entry)
            atomic_write_text(target / result_name(new_id), json.dumps(doc, indent=1, allow_nan=False) + "\n")
            runs.append({"profile": profile, "grid": grid, "run_id": new_id, "from_run_id": entry["run_id"],
                         "session": entry["session"].label, "status": doc.get("status"),
                         "machine": doc["env"]["machine_label"], "replaced_sessions": entry["replaced"]})
        manifest = {"sessions": [{"label": s.label, "folder": display_path(s.folder)} for s in sessions],
                    "profiles": profiles, "rule": RULE, "runs": runs}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
