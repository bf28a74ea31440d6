"""The controls figure: per workload, mean batch latency of every arm with its interval, best static K marked."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nwor.controls import NO_RESULTS
from nwor.plots import save_figure

ORDER = {"nospec": 0, "static": 1, "adaptive": 2, "dynamic_sd": 3, "other": 4}
PALETTE = sns.color_palette("colorblind", 5)
COLOR = {"nospec": PALETTE[3], "static": PALETTE[0], "best": PALETTE[2], "adaptive": PALETTE[1],
         "dynamic_sd": PALETTE[4], "other": "grey"}


def _name(row) -> str:
    if row.control == "static":
        return f"K={row.k}"
    where = " (Dynamic SD run)" if row.run_id.endswith("_dynamic_sd") and row.control == "adaptive" else ""
    return {"nospec": "no spec", "adaptive": "adaptive", "dynamic_sd": "Dynamic SD"}.get(row.control, row.arm) + where


def controls_figure(latencies: pd.DataFrame, folder) -> plt.Figure | None:
    """`plot_controls`, saved as `<folder>/controls.{png,svg}`; None (nothing drawn or saved) without results:
    the section's summary then says "no controls results".
    """
    if latencies.empty:
        return None
    fig = plot_controls(latencies)
    save_figure(fig, folder, "controls")
    return fig


def _instances_note(latencies: pd.DataFrame) -> str:
    """How many engine instances stand behind the arms, so a missing bar is read right: a single instance has
    no interval, and an interval narrower than its marker is hidden behind it."""
    counts = sorted({int(n) for n in latencies.instances.dropna()})
    single = (latencies.instances == 1).sum()
    said = f"engine instances per arm: {', '.join(map(str, counts))}" if counts else "engine instances unknown"
    return (f"{said}; {single} arm(s) of one instance have no interval; an interval narrower than its marker "
            "is hidden behind it." if single else f"{said}; an interval narrower than its marker is hidden behind it.")


def plot_controls(latencies: pd.DataFrame) -> plt.Figure:
    """One panel per workload: a point and 95 % interval per arm; the best static K green, its ties hollow
    green; "no controls results" written on an empty figure when the grid was not run.
    """
    workloads = list(dict.fromkeys(latencies.workload))
    if not workloads:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, NO_RESULTS, ha="center", va="center", fontsize=9)
        return fig
    fig, axes = plt.subplots(len(workloads), 1, figsize=(10, 2.6 * len(workloads)), squeeze=False)
    for ax, workload in zip(axes[:, 0], workloads):
        mine = latencies[latencies.workload == workload].copy()
        mine["order"] = [(ORDER.get(c, 4), k if pd.notna(k) else 0, r) for c, k, r in
                         zip(mine.control, mine.k, mine.run_id)]
        mine = mine.sort_values("order")
        for x, row in enumerate(mine.itertuples()):
            color = COLOR["best"] if row.best or row.tied_with_best else COLOR.get(row.control, "grey")
            low, high = row.mean_latency_s - row.ci_low, row.ci_high - row.mean_latency_s
            ax.errorbar([x], [row.mean_latency_s], yerr=[[low], [high]] if pd.notna(row.ci_low) else None,
                        fmt="o", color=color, mfc=color if not row.tied_with_best or row.best else "white",
                        ms=8 if row.best else 6, capsize=3)
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels([_name(r) for r in mine.itertuples()], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("mean batch latency (s)")
        ax.set_title(f"{mine.label.iloc[0]}: best static K filled green, tied Ks hollow green", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, -0.01, "95 % intervals: hierarchical bootstrap over engine instances, then batches "
             f"(nwor.stats.mean_ci); {_instances_note(latencies)}", fontsize=7)
    fig.tight_layout()
    return fig
