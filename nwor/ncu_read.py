"""Read Nsight Compute results (.ncu-rep reports or their CSV exports) into one tidy DataFrame.

Columns: Kernel, Metric, Unit, Value, Process, ID (+ Range when NVTX ranges were recorded); values in base units.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Iterable, TextIO

import pandas as pd

from nwor.errors import ProfilerError
from nwor.ncu_metrics import DRAM_READ, DRAM_WRITE, GPU_TIME, NCU_METRICS
from nwor.ncu_units import to_base_unit

logger = logging.getLogger(__name__)

COLUMNS = ["Kernel", "Metric", "Unit", "Value", "Process", "ID"]
DEFAULT_METRICS = NCU_METRICS  # the project's one list
TIME_METRIC = GPU_TIME
# ncu adds these families to every result whatever --metrics asks for; they describe the
# device and the launch, not the measured work, so "all metrics" leaves them out.
ALWAYS_ADDED_PREFIXES = ("device__attribute_", "launch__", "c2clink__", "nvlink__", "numa__", "profiler__",
                         "sm__maximum_warps", "smsp__maximum_warps")
# Raw-page NVTX cell: '692  "<default domain>:measure:none:none:none:none:none:none" '
# (pid, then one quoted domain:range:payload-type:payload:color-type:color:msg-type:msg per range).
_NVTX_CELL_RE = re.compile(r'"([^"]*)"')
_NVTX_FIELDS_RE = re.compile(r"^(?P<domain>[^:]*):(?P<range>.*)(?::[^:]*){6}$")
_NVTX_COLUMN = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
_ID_COLUMNS = {"ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream",
               "Block Size", "Grid Size", "Device", "CC", _NVTX_COLUMN,
               "Id:Domain:Start/Stop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"}


def _measured(names: Iterable[str]) -> list[str]:
    return [n for n in names if not n.startswith(ALWAYS_ADDED_PREFIXES)]


def _check_metrics(requested: Iterable[str], available: Iterable[str], source) -> None:
    missing = sorted(set(requested) - set(available))
    if missing:
        raise ProfilerError(f"{source}: metrics not in the report: {', '.join(missing)}",
                            log_path=str(source), missing=missing)


def _nvtx_range(state) -> str | None:
    """Join the push/pop range names of every NVTX domain of an action ('outer/inner')."""
    if state is None:
        return None
    return "/".join(n for d in state.domains() for n in state.domain_by_id(d).push_pop_ranges()) or None


def read_report(path: str | Path, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a ``.ncu-rep`` file through NVIDIA's ``ncu_report`` module.

    Kernel replay gives one action per kernel; app-range replay one action named ``range``
    per profiled range. ``ncu_report`` exposes no process id, so ``Process`` is null here.

    Args:
        path: the report file.
        metrics: metric names to keep; None keeps every measured metric (not ncu's
            always-added device/launch attributes).

    Returns:
        The tidy frame, one row per (action, metric), values in base units.

    Raises:
        ProfilerError: the module is missing, the file holds no ranges (``load_report`` accepts
            a corrupt file silently and returns zero ranges), or a requested metric is absent.
    """
    metrics = list(metrics) if metrics is not None else None
    try:
        import ncu_report
    except ImportError as err:
        raise ProfilerError(f"cannot read {path}: ncu_report is not importable ({err}); "
                            "use csv_export_argv() and read_csv_export()", log_path=str(path)) from err
    try:
        context = ncu_report.load_report(str(path))
    except (FileNotFoundError, RuntimeError) as err:
        raise ProfilerError(f"cannot load {path}: {err}", log_path=str(path)) from err
    if context.num_ranges() == 0:
        raise ProfilerError(f"{path}: no ranges in the report (not an ncu report, or nothing was profiled)",
                            log_path=str(path))
    rows, has_nvtx, action_id = [], False, 0
    for range_index in range(context.num_ranges()):
        for action in context.range_by_idx(range_index):
            names = action.metric_names()
            wanted = metrics if metrics is not None else _measured(names)
            _check_metrics(wanted, names, path)
            # The demangled base matches the CSV export's "Kernel Name" (the default
            # function base drops template arguments and merges instantiations).
            kernel = action.name(ncu_report.IAction.NameBase_DEMANGLED)
            nvtx = _nvtx_range(action.nvtx_state())
            has_nvtx = has_nvtx or nvtx is not None
            for name in wanted:
                metric = action[name]
                value, unit = to_base_unit(metric.as_double(), metric.unit())
                rows.append((kernel, name, unit, value, None, action_id, nvtx))
            action_id += 1
    frame = pd.DataFrame(rows, columns=COLUMNS + ["Range"])
    return frame if has_nvtx else frame.drop(columns="Range")


def _number(text: str) -> float | None:
    # Exports keep thousands separators even in base units: "8,410,624".
    text = text.strip().replace(",", "")
    return float(text) if text else None


def _range_from_cell(cell: str) -> str | None:
    matches = (_NVTX_FIELDS_RE.match(quoted) for quoted in _NVTX_CELL_RE.findall(cell))
    return "/".join(m["range"] for m in matches if m) or None


def read_csv_export(source: str | Path | TextIO, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Read an ``ncu --import R --csv`` export: ``--page raw`` (wide) or ``--page details`` (long).

    Raw page: row 1 is the header, row 2 the units, then one row per kernel. Details page: one
    row per (kernel, metric) with ``Metric Name``, ``Metric Unit``, ``Metric Value``. Auto-scaled
    units (``Mbyte``, ``us``) are converted to base units with SI prefixes, as ncu scales them.

    Args:
        source: a path or an open text stream holding the export.
        metrics: metric names to keep; None keeps every measured metric.

    Returns:
        The tidy frame (``Range`` added when the export has NVTX columns).

    Raises:
        ProfilerError: the text is not a recognised export, a value is not a number, or a
            requested metric is absent.
    """
    if isinstance(source, (str, Path)):
        try:
            with open(source, newline="") as handle:
                rows = list(csv.reader(handle))
        except OSError as err:
            raise ProfilerError(f"cannot read ncu export {source}: {err.strerror}", log_path=str(source)) from None
    else:
        rows = list(csv.reader(source))
    name = getattr(source, "name", source)
    if not rows:
        raise ProfilerError(f"{name}: empty CSV export", log_path=str(name))
    header = rows[0]
    if "Metric Name" in header:
        return _read_details(header, rows[1:], metrics, name)
    if "Kernel Name" not in header or len(rows) < 2:
        raise ProfilerError(f"{name}: not an ncu CSV export (no 'Kernel Name' column)", log_path=str(name))
    units, records = rows[1], [dict(zip(header, row)) for row in rows[2:]]
    available = [c for c in header if c not in _ID_COLUMNS]
    wanted = list(metrics) if metrics is not None else _measured(available)
    _check_metrics(wanted, available, name)
    has_nvtx = _NVTX_COLUMN in header
    unit_of = dict(zip(header, units))
    out = []
    for record in records:
        nvtx = _range_from_cell(record[_NVTX_COLUMN]) if has_nvtx else None
        for metric in wanted:
            out.append(_tidy_row(record, metric, record[metric], unit_of[metric], nvtx, name))
    frame = pd.DataFrame(out, columns=COLUMNS + ["Range"])
    return frame if has_nvtx else frame.drop(columns="Range")


def _tidy_row(record: dict, metric: str, text: str, unit: str, nvtx, source) -> tuple:
    try:
        number = _number(text)
    except ValueError as err:
        raise ProfilerError(f"{source}: kernel {record['ID']} metric {metric}: not a number: {text!r}",
                            log_path=str(source)) from err
    value, unit = to_base_unit(number, unit) if number is not None else (None, unit)
    process = int(record["Process ID"]) if record["Process ID"].isdigit() else record["Process ID"]
    return (record["Kernel Name"], metric, unit, value, process, int(record["ID"]), nvtx)


def _read_details(header, rows, metrics, name) -> pd.DataFrame:
    records = [dict(zip(header, row)) for row in rows]
    wanted = set(metrics) if metrics is not None else None
    if wanted is not None:
        _check_metrics(wanted, {r["Metric Name"] for r in records}, name)
    out = [_tidy_row(r, r["Metric Name"], r["Metric Value"], r["Metric Unit"], None, name)
           for r in records if wanted is None or r["Metric Name"] in wanted]
    return pd.DataFrame(out, columns=COLUMNS + ["Range"]).drop(columns="Range")


def csv_export_argv(ncu: str, report_path: str | Path) -> list[str]:
    """The CSV export command, for hosts without ``ncu_report``; ``read_csv_export`` reads its stdout."""
    return [str(ncu), "--import", str(report_path), "--csv", "--page", "raw", "--print-units", "base"]


def count_results(df: pd.DataFrame) -> int:
    """Number of profiled results (kernels, or ranges for app-range replay) in a tidy frame."""
    return int(df["ID"].nunique())


def totals(df: pd.DataFrame) -> dict[str, float | None]:
    """Region totals per metric, in base units.

    Counters and durations are summed. Percentages are not additive: they are averaged
    weighted by ``gpu__time_duration.sum`` (which, for a %-of-peak metric, equals the
    region's own percentage), and are null when the frame has no durations.

    Returns:
        ``{metric: total}`` for a tidy frame; a metric with no values at all is null, never 0.
    """
    result: dict[str, float | None] = {}
    durations = df[df["Metric"] == TIME_METRIC].set_index("ID")["Value"]
    for metric, group in df.groupby("Metric", sort=True):
        values = group["Value"].dropna()
        if values.empty:
            result[metric] = None
        elif (group["Unit"] == "%").all():
            weights = durations.reindex(group.dropna(subset=["Value"])["ID"]).to_numpy()
            has_weights = len(weights) > 0 and not pd.isna(weights).any() and weights.sum() > 0
            result[metric] = float((values.to_numpy() * weights).sum() / weights.sum()) if has_weights else None
        else:
            result[metric] = float(values.sum())
    return result


def units(df: pd.DataFrame) -> dict[str, str]:
    """Map each metric of a tidy frame to its (base) unit."""
    return {metric: str(unit) for metric, unit in df.groupby("Metric")["Unit"].first().items()}


def top_kernels(df: pd.DataFrame, by: str = DRAM_WRITE, n: int = 10) -> list[dict]:
    """Kernels grouped by name, largest ``by`` total first.

    Returns:
        The first ``n`` of ``[{"kernel": name, "count": launches, metric: total, ...}, ...]`` for a
        tidy frame (percentages left out: a sum of them means nothing).

    Raises:
        ProfilerError: ``by`` is not in the frame.
    """
    if by not in set(df["Metric"]):
        raise ProfilerError(f"cannot rank kernels by {by}: not among the metrics read", missing=[by])
    additive = df[df["Unit"] != "%"]
    wide = additive.pivot_table(index=["Kernel", "ID"], columns="Metric", values="Value", aggfunc="sum")
    grouped = wide.groupby(level="Kernel")
    table = grouped.sum(min_count=1)
    table.insert(0, "count", grouped.size())
    table = table.sort_values(by, ascending=False, kind="stable").head(n)
    return [{"kernel": kernel, "count": int(row.pop("count")),
             **{m: (None if pd.isna(v) else float(v)) for m, v in row.items()}}
            for kernel, row in ((k, r.to_dict()) for k, r in table.iterrows())]


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "null"
    return f"{value:,.0f} {unit}" if unit in ("byte", "ns") else f"{value:,.2f} {unit}"


def summarize(path: str | Path, metrics: Iterable[str] | None = None, n: int = 10) -> str:
    """Text summary of a report or CSV export, for ``nwor ncu summarize PATH``.

    Args:
        path: a ``.ncu-rep`` file or a ``--csv`` export.
        metrics: metrics to show; None shows those of ``DEFAULT_METRICS`` the file holds.
        n: how many top kernels to list.

    Returns:
        Kernel (or range) count, per-metric totals in base units (bytes and ns as whole
        numbers with thousands separators) and the top kernels by DRAM write bytes.

    Raises:
        ProfilerError: unreadable file, missing metrics, or nothing profiled in it.
    """
    path = Path(path)
    df = read_report(path) if path.suffix == ".ncu-rep" else read_csv_export(path)
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in set(df["Metric"])]
    _check_metrics(metrics, set(df["Metric"]), path)
    df = df[df["Metric"].isin(list(metrics))]
    if df.empty:
        raise ProfilerError(f"{path}: no profiled kernels or ranges (empty scoped region)", log_path=str(path))
    unit_of = units(df)
    lines = [f"{path}", f"results: {count_results(df)} ({df['Kernel'].nunique()} distinct names)"]
    lines += [f"  {metric:<55} {_format(total, unit_of[metric])}" for metric, total in totals(df).items()]
    by = next((m for m in (DRAM_WRITE, DRAM_READ) if m in unit_of), None)
    if by is not None:
        lines.append(f"top {n} by {by}:")
        for entry in top_kernels(df, by=by, n=n):
            lines.append(f"  {entry['count']:>5}x {_format(entry[by], unit_of[by]):>20}  {entry['kernel'][:90]}")
    return "\n".join(lines)
