"""Report figure of the pinned-acceptance sweep: the length the controller chose against the latency-optimal
static K at each acceptance level, and every arm's latency (nwor.acceptance_sweep's tables)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

NO_SWEEP = "no pinned-acceptance runs (controller_grid `ctl_synthetic_*`, GPU builds only)"


def plot_acceptance_sweep(arms: pd.DataFrame, levels: pd.DataFrame) -> plt.Figure | str:
    """Left: adaptive mean chosen draft length and the fastest static K vs pinned acceptance. Right: mean batch
    latency of each arm vs pinned acceptance. Returns NO_SWEEP (a string to show) when there is nothing to draw.

    Args:
        arms, levels: `nwor.acceptance_sweep.sweep` output.
    """
    if levels.empty:
        return NO_SWEEP
    sns.set_theme(style="whitegrid")
    fig, (lengths, latency) = plt.subplots(1, 2, figsize=(14, 5), sharex=True)
    levels = levels.sort_values("acceptance_pinned")
    lengths.plot(levels.acceptance_pinned, levels.adaptive_mean_draft_length, "o-", color="black",
                 label="adaptive controller: mean chosen length")
    lengths.plot(levels.acceptance_pinned, levels.best_static_k, "s", color="tab:green", ms=9,
                 label="latency-optimal static K (fastest arm)")
    lengths.legend(fontsize=8)
    lengths.set(xlabel="pinned per-token acceptance", ylabel="draft length (tokens)")
    for name, arm in arms.sort_values("acceptance_pinned").groupby("arm", sort=True):
        adaptive, k = bool(arm.adaptive.iloc[0]), int(arm.num_speculative_tokens.iloc[0])
        latency.plot(arm.acceptance_pinned, arm.mean_latency_s, "o-" if adaptive else "s--",
                     color="black" if adaptive else None, label="adaptive (arm run)" if adaptive else f"static K = {k}")
    latency.legend(fontsize=8)
    latency.set(xlabel="pinned per-token acceptance", ylabel="mean batch latency (s)")
    note = "; ".join(sorted(set(levels.note.dropna()))) or "instance-aware intervals in the table"
    fig.suptitle(f"Pinned acceptance: the controller's length vs the best static K ({note})", fontsize=10)
    fig.tight_layout()
    return fig


def show_acceptance_sweep(arms: pd.DataFrame, levels: pd.DataFrame, folder):
    """`plot_acceptance_sweep`, saved as `acceptance_sweep` under `folder`; a Markdown note when there is no sweep.

    Raises:
        OSError: the figure cannot be written.
    """
    from nwor.plots import show_figure

    return show_figure(plot_acceptance_sweep(arms, levels), folder, "acceptance_sweep")
