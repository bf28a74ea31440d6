"""Report figure of the adaptive controller's trajectory: EWMA and chosen draft length per engine step, per arm."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nwor.settling import BAND

NO_TRACES = "no controller traces (run `nwor run controller_grid`: traces need nwor's plugin in the engine)"


def pick_run(traces: pd.DataFrame) -> str | None:
    """The run to draw: the first with a shifting workload (several parts), else the first with traces."""
    if traces.empty:
        return None
    shifting = [r for r, g in traces.groupby("run_id", sort=True) if g.part.nunique(dropna=True) > 1]
    return shifting[0] if shifting else sorted(traces.run_id.unique())[0]


def plot_trajectory(traces: pd.DataFrame, run_id: str | None = None) -> plt.Figure | str:
    """EWMA (top) and chosen draft length (bottom) vs step for every arm of one run's first engine instance.

    Dotted lines mark workload shifts. Returns NO_TRACES (a string to show) when there is nothing to draw.

    Args:
        traces: `nwor.controller_trace.traces_frame` output.
        run_id: the run to draw; None picks one (`pick_run`).
    """
    run_id = run_id or pick_run(traces)
    data = traces[traces.run_id == run_id] if run_id else traces.iloc[0:0]
    if data.empty:
        return NO_TRACES
    data = data[data.instance == data.instance.min()]
    sns.set_theme(style="whitegrid")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for label, arm in data.groupby("label", sort=True):
        arm = arm.sort_values("step")
        adaptive = arm.ewma.notna().any()  # static arms keep no EWMA, so no alpha to name
        name = label if "alpha" in label or not adaptive else f"{label} (alpha {arm.ewma_alpha.iloc[0]:g})"
        if adaptive:
            top.plot(arm.step, arm.ewma, label=name, lw=1.2)
        bottom.step(arm.step, arm.draft_length, where="post", label=name, lw=1.2)
    first = data[data.arm == sorted(data.arm.unique())[0]].sort_values("step")
    shifts = first.step[first.part.ne(first.part.shift()) & first.part.shift().notna()]
    for step in shifts:
        for ax in (top, bottom):
            ax.axvline(step, color="0.4", ls=":", lw=1)
    for bound in (0.3, 0.5, 0.7):  # the fork's length thresholds on the EWMA
        top.axhline(bound, color="0.8", lw=0.8)
    top.set(ylabel="acceptance EWMA", ylim=(0, 1))
    top.legend(fontsize=7, loc="upper right", ncol=2)
    bottom.legend(fontsize=7, loc="center right")  # static arms have no EWMA: only this panel names them
    bottom.set(xlabel="engine step (the arm's own, measured batches)", ylabel="chosen draft length",
               yticks=sorted(data.draft_length.dropna().unique()))
    parts = ", ".join(str(p) for p in first.drop_duplicates("part").part.dropna().astype(int))
    note = f"; parts {parts} (dotted: shifts; settling band ±max({BAND}, 2 × noise))" if len(shifts) else ""
    fig.suptitle(f"Controller trajectory: {run_id}, instance {int(data.instance.min())}{note}", fontsize=11)
    fig.tight_layout()
    return fig


def show_trajectory(traces: pd.DataFrame, folder, run_id: str | None = None):
    """`plot_trajectory`, saved as `controller_trajectory` under `folder`; a Markdown note when there are no traces.

    Raises:
        OSError: the figure cannot be written.
    """
    from nwor.plots import show_figure

    return show_figure(plot_trajectory(traces, run_id), folder, "controller_trajectory")
