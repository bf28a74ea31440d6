"""Which machine each run came from, and which runs may be compared: the same configuration differed by 30 %
between two machines, so a comparison of two runs, and an A/A band, hold only on the machine that measured them.

A run's machine is its `env.machine_label` (`NWOR_MACHINE_LABEL`), else `env.machine_id` (nwor.provenance), else
`UNKNOWN` (results written before either existed). An unknown machine is compared as before: nothing says it differs.
"""
from __future__ import annotations

import pandas as pd

UNKNOWN = "unknown"
NOT_COMPARABLE = "not comparable"  # a pairing status, beside "ok", "unpaired" and "not measured"


def machine_name(env: dict) -> str:
    """The machine a result's `env` names: its label if set, else its id, else `UNKNOWN`."""
    return env.get("machine_label") or env.get("machine_id") or UNKNOWN


def is_known(machine) -> bool:
    """Whether `machine` names a machine (not `UNKNOWN`, None or NaN)."""
    return isinstance(machine, str) and machine != UNKNOWN


def different_machines(a, b) -> str | None:
    """Why two runs' numbers must not be compared (both machines known, and different), else None."""
    if is_known(a) and is_known(b) and a != b:
        return f"runs from different machines: {a} vs {b}"
    return None


def shared_machine(a, b) -> str:
    """The machine a comparison of two runs was made on: theirs when both name the same one, else `UNKNOWN`."""
    return a if is_known(a) and a == b else UNKNOWN


def machine_column(frame: pd.DataFrame) -> pd.Series:
    """Each row's machine, `UNKNOWN` where a row (or the whole frame, from before machines) names none."""
    if "machine" not in frame:
        return pd.Series(UNKNOWN, frame.index, dtype=object)
    return frame["machine"].fillna(UNKNOWN)


def machine_of(runs: pd.DataFrame) -> dict:
    """run id -> machine, from a runs frame of `nwor.analysis.load_profile` (empty when it has no machines)."""
    return dict(zip(runs.run_id, runs.machine)) if "machine" in runs else {}


def only_machine(rows: pd.DataFrame) -> tuple[str | None, int]:
    """(the one machine the comparison rows were made on, or None; how many machines they name)."""
    machines = set(rows["machine"].dropna()) if "machine" in rows else set()
    return (next(iter(machines)) if len(machines) == 1 else None), len(machines)


def machine_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs per machine (runs with a result; missing and unreadable ones name no machine), most runs first."""
    machines = runs["machine"].dropna() if "machine" in runs else pd.Series(dtype=object)
    counts = machines.value_counts()
    return pd.DataFrame({"machine": counts.index, "runs": counts.to_numpy()}).sort_values(
        ["runs", "machine"], ascending=[False, True], ignore_index=True)


def mixed_machines_warning(runs: pd.DataFrame) -> str | None:
    """One Markdown line when the runs come from more than one machine, else None."""
    counts = machine_counts(runs)
    if len(counts) < 2:
        return None
    return (f"**Runs from {len(counts)} machines.** Comparisons between runs of different machines are not made "
            "(\"not comparable\"), and each verdict uses only its own machine's A/A band; runs of an unknown "
            "machine (results without `env.machine_id`) are compared as before.")
