"""The result file: schema version, atomic writing, reading with a schema check, and the seed's summary paths."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from nwor._version import __version__
from nwor.errors import SchemaError

SCHEMA_VERSION = 2  # 2: design, replicates, warm-up rule; top-level fields describe arm "run"
STATUSES = ("ok", "failed", "refused")


def write_result(path: str | Path, doc: dict) -> Path:
    """Write `doc` as JSON atomically: a reader sees the old file, the whole new one, or none.

    Raises:
        SchemaError: `doc` lacks schema_version/status or has an unknown status.
    """
    if doc.get("schema_version") != SCHEMA_VERSION or doc.get("status") not in STATUSES:
        raise SchemaError(f"refusing to write {path}: schema_version/status missing or unknown",
                          path=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, allow_nan=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are shared artifacts
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_result(path: str | Path) -> dict:
    """Read a result file written by this schema version.

    Raises:
        SchemaError: unreadable JSON or another schema version.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SchemaError(f"cannot read result {path}: {err}", path=str(path), problem="unreadable") from None
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise SchemaError(f"{path}: not a nwor result (no JSON object with a schema_version)", path=str(path),
                          problem="unreadable")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema_version {doc['schema_version']!r}, this nwor reads {SCHEMA_VERSION}",
                          path=str(path), problem="schema_version")
    return doc


def envelope(spec, status: str, **fields) -> dict:
    """The fields every result has, successful or not."""
    return {"schema_version": SCHEMA_VERSION, "nwor_version": __version__, "run_id": spec.run_id,
            "grid": spec.grid, "profile": spec.profile, "status": status, "error": None,
            "params_hash": spec.params_hash(), "config": spec.to_dict(), "spec": spec.to_dict(),
            "workload": {"number": spec.workload_number, "name": spec.workload_name}, **fields}


def failure(spec, error: BaseException | str, *, status: str = "failed", notebook: str | None = None,
            **fields) -> dict:
    """A result that records why a run did not finish (never mistaken for a measurement)."""
    kind = type(error).__name__ if isinstance(error, BaseException) else "Error"
    return envelope(spec, status, **fields, error={"type": kind, "message": str(error), "notebook": notebook})


def seed_summary(spec, metrics: dict, ncu_totals: dict | None) -> dict:
    """`.summary.per_mode[0]` with the original suite's field names, so its jq snippets keep working."""
    mode = f"adaptive{int(spec.adaptive_draft_length)}_thresh{spec.confidence_threshold}"
    return {"per_mode": [{
        "mode": mode,
        "latency_avg_s": metrics.get("mean_latency_s"),
        "latency_p50_s": metrics.get("p50_latency_s"),
        "latency_p95_s": metrics.get("p95_latency_s"),
        "batches": spec.measured_batches * spec.engine_instances,  # arm "run"'s, over its engine instances
        "spec_num_drafts": metrics.get("num_drafts"),
        "spec_num_draft_tokens": metrics.get("num_draft_tokens"),
        "spec_num_accepted_tokens": metrics.get("num_accepted_tokens"),
        "spec_avg_accepted_per_window": metrics.get("mean_accepted_per_draft"),
        "spec_acceptance_ratio": metrics.get("draft_acceptance_rate"),
        "ncu_metrics": ncu_totals,
    }]}
