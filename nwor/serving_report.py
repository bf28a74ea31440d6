"""Serving results as tables and a figure: every load point of every instance, and each run's effect
(run arm vs baseline arm) against load, with an interval over server instances and where its sign changes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nwor import stats

SWEEP_COLUMNS = ["arm", "instance", "concurrency", "completed", "duration_s", "output_tokens_per_s",
                 "request_goodput_per_s", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms",
                 "p50_itl_ms", "p50_e2el_ms", "p99_e2el_ms", "draft_acceptance_rate", "mean_acceptance_length"]
# Metrics where a smaller value is better: the figure says so, a negative effect is then an improvement.
LOWER_IS_BETTER = ("_ms", "duration_s")


def sweep_frame(docs: list[dict]) -> pd.DataFrame:
    """One row per load point per server instance, from serving result documents (others are skipped).

    Columns: run_id, grid, workload, arm, instance, position, concurrency and every point metric.
    """
    rows = []
    for doc in docs:
        if doc.get("status") != "ok" or not isinstance(doc.get("serving"), dict):
            continue
        for rep in doc["replicates"]:
            for point in rep["sweep"]:
                flat = {k: v for k, v in point.items() if not isinstance(v, (dict, list))}
                rows.append({"run_id": doc["run_id"], "grid": doc["grid"],
                             "workload": (doc.get("workload") or {}).get("name"),
                             "aa": bool(doc["serving"].get("aa")), "arm": rep["arms"][0],
                             "instance": rep["instance"], **flat})
    return pd.DataFrame(rows)


def load_sweeps(folder: str | Path) -> pd.DataFrame:
    """`sweep_frame` of every result JSON in a grid folder (e.g. outputs/smoke/serving_grid); unreadable,
    failed and non-serving results are left out."""
    from nwor.errors import SchemaError
    from nwor.results import read_result

    docs = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            docs.append(read_result(path))
        except SchemaError:
            continue
    return sweep_frame(docs)


def _interval(run: np.ndarray, base: np.ndarray, seed: int) -> tuple[float | None, float | None]:
    """The instance-aware interval of mean(run)/mean(base) - 1 (`nwor.stats.change_ci`: server instances
    resampled, Student-t scaled on instance means), as every nwor verdict uses; None with < 2 servers an arm."""
    if len(run) < stats.MIN_INSTANCES or len(base) < stats.MIN_INSTANCES:
        return None, None
    estimate = stats.change_ci([[value] for value in base], [[value] for value in run], seed=seed)
    return estimate.ci_low / 100, estimate.ci_high / 100


def effect_vs_load(frame: pd.DataFrame, metric: str = "output_tokens_per_s", seed: int = 0) -> pd.DataFrame:
    """The run arm's relative difference from the baseline arm at each load point of each run.

    `effect` = mean over run-arm instances / mean over baseline instances - 1 (null when the baseline
    mean is 0 or missing); `low`/`high` its 95 % interval over server instances (`nwor.stats.change_ci`,
    `stats.HIERARCHICAL`; null with fewer than 2 instances per arm); `sign_change` is True at the first load
    point whose effect has the other sign than the previous point's.

    Raises:
        KeyError: `metric` is not a column of `frame`.
    """
    if metric not in frame.columns:
        raise KeyError(f"no metric {metric!r} in the sweep frame (columns: {', '.join(frame.columns)})")
    rows = []
    for (run_id, concurrency), cell in frame.groupby(["run_id", "concurrency"], sort=True):
        run = cell.loc[cell["arm"] == "run", metric].dropna().to_numpy(dtype=float)
        base = cell.loc[cell["arm"] == "baseline", metric].dropna().to_numpy(dtype=float)
        run_mean = float(run.mean()) if len(run) else None
        base_mean = float(base.mean()) if len(base) else None
        effect = run_mean / base_mean - 1 if run_mean is not None and base_mean else None
        low, high = _interval(run, base, seed) if effect is not None else (None, None)
        rows.append({"run_id": run_id, "workload": cell["workload"].iloc[0], "aa": bool(cell["aa"].iloc[0]),
                     "concurrency": int(concurrency), "metric": metric, "run": run_mean,
                     "baseline": base_mean, "effect": effect, "low": low, "high": high,
                     "instances_run": len(run), "instances_baseline": len(base)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["sign_change"] = False
    for _, group in out.groupby("run_id"):
        previous = None
        for index, effect in group["effect"].items():
            if effect is None or (isinstance(effect, float) and math.isnan(effect)) or effect == 0:
                continue
            sign = effect > 0
            if previous is not None and sign != previous:
                out.loc[index, "sign_change"] = True
            previous = sign
    return out


def judge_against_aa(effects: pd.DataFrame) -> pd.DataFrame:
    """`effects` plus the A/A band of the same workload and load point, and whether each effect is established.

    The band is the A/A run's interval. As everywhere in nwor, a verdict needs intervals: an effect is
    established when its interval lies wholly outside the band; without an interval on either side (one server
    instance per arm) `established` is null, "no verdict", however large the point effect. A/A rows and load
    points without an A/A run get null too.
    """
    out = effects.copy()
    out["aa_low"], out["aa_high"], out["established"] = None, None, None
    aa = effects[effects["aa"]]
    for index, row in effects[~effects["aa"]].iterrows():
        match = aa[(aa["workload"] == row["workload"]) & (aa["concurrency"] == row["concurrency"])]
        if match.empty or pd.isna(match["low"].iloc[0]) or pd.isna(row["low"]):
            continue
        ref = match.iloc[0]
        out.at[index, "aa_low"], out.at[index, "aa_high"] = ref["low"], ref["high"]
        out.at[index, "established"] = bool(row["low"] > ref["high"] or row["high"] < ref["low"])
    return out


def sign_changes(effects: pd.DataFrame) -> pd.DataFrame:
    """Where each run's effect changes sign: the load point before and after, with both effects."""
    rows = []
    for run_id, group in effects.groupby("run_id"):
        valid = group.dropna(subset=["effect"])
        valid = valid[valid["effect"] != 0]
        for (_, before), (_, after) in zip(valid.iterrows(), valid.iloc[1:].iterrows()):
            if (before["effect"] > 0) != (after["effect"] > 0):
                rows.append({"run_id": run_id, "metric": after["metric"], "from_concurrency": before["concurrency"],
                             "to_concurrency": after["concurrency"], "effect_before": before["effect"],
                             "effect_after": after["effect"]})
    return pd.DataFrame(rows, columns=["run_id", "metric", "from_concurrency", "to_concurrency", "effect_before",
                                       "effect_after"])


def plot_effect_vs_load(effects: pd.DataFrame, title: str | None = None):
    """Effect (%) against concurrency (log2 axis), one line per run, interval bars, sign changes ringed.

    Returns:
        A matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    metric = effects["metric"].iloc[0] if not effects.empty else "metric"
    for run_id, group in effects.groupby("run_id"):
        group = group.dropna(subset=["effect"])
        x, y = group["concurrency"].to_numpy(), group["effect"].to_numpy(dtype=float) * 100
        has_ci = group["low"].notna() & group["high"].notna()
        yerr = np.vstack([y - group["low"].fillna(0).to_numpy(dtype=float) * 100,
                          group["high"].fillna(0).to_numpy(dtype=float) * 100 - y]) * has_ci.to_numpy()
        line = ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=run_id)
        flips = group["sign_change"].to_numpy(dtype=bool)
        ax.scatter(x[flips], y[flips], s=160, facecolors="none", edgecolors=line[0].get_color())
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max concurrency (requests in flight)")
    better = "lower is better" if metric.endswith(LOWER_IS_BETTER) else "higher is better"
    ax.set_ylabel(f"{metric}: run / baseline - 1 (%)\n({better})")
    ax.set_title(title or f"Effect vs load: {metric}")
    if not effects.empty:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def plot_load_curves(frame: pd.DataFrame, metric: str = "output_tokens_per_s", run_id: str | None = None):
    """A metric against concurrency for each arm of one run (the first run when not named): every instance
    as a faint line, the arm's mean over instances as a bold one.

    Returns:
        A matplotlib Figure.

    Raises:
        KeyError: `metric` is not a column of `frame`, or `run_id` is not in it.
    """
    import matplotlib.pyplot as plt

    if metric not in frame.columns:
        raise KeyError(f"no metric {metric!r} in the sweep frame")
    run_id = run_id or frame["run_id"].iloc[0]
    runs = frame[frame["run_id"] == run_id]
    if runs.empty:
        raise KeyError(f"no run {run_id!r} in the sweep frame")
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, rows in runs.groupby("arm", sort=True):
        mean = rows.groupby("concurrency")[metric].mean()
        (line,) = ax.plot(mean.index, mean.to_numpy(dtype=float), marker="o", linewidth=2, label=arm)
        for _, inst in rows.groupby("instance"):
            ax.plot(inst["concurrency"], inst[metric].to_numpy(dtype=float), color=line.get_color(), alpha=0.3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max concurrency (requests in flight)")
    ax.set_ylabel(metric)
    ax.set_title(f"{run_id}: {metric} vs load")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def report_section(folder: str | Path, metric: str = "output_tokens_per_s") -> tuple[pd.DataFrame | None, str]:
    """What the report shows for a profile's serving grid folder: the judged effects (None without serving
    results) and a one-paragraph summary (how many runs, load points and server instances, what is established).
    """
    frame = load_sweeps(folder) if Path(folder).is_dir() else pd.DataFrame()
    if frame.empty:
        return None, ("No serving results for this profile: the serving grid runs only when named "
                      "(`nwor run serving_grid --profile <profile>`, docs/serving.md).")
    effects = judge_against_aa(effect_vs_load(frame, metric))
    judged = effects[effects["established"].notna()]
    established = judged[judged["established"].astype(bool)]
    unjudged = int((~effects["aa"] & effects["established"].isna()).sum())
    loads = sorted(effects["concurrency"].unique())
    summary = (f"{effects['run_id'].nunique()} serving runs ({int(effects['aa'].groupby(effects['run_id']).first().sum())}"
               f" A/A), load points {', '.join(map(str, loads))}, up to {int(effects['instances_run'].max())} server "
               f"instances per arm. Effect = run arm / features-off arm - 1 in {metric}; "
               f"{len(established)} of {len(judged)} judged effects lie outside their A/A band; {unjudged} effects have no "
               f"verdict (an interval needs at least 2 server instances per arm, and an A/A run with them).")
    return effects, summary
