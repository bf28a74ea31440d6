"""Report figures: each function takes one analysis DataFrame and returns a matplotlib Figure.

Every figure carries a footnote naming the vLLM build and `features.feature_impl` of the runs it shows,
and draws "no data (reason)" instead of an empty axis when a measurement is missing.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib import ticker
import numpy as np
import pandas as pd
import seaborn as sns

from nwor.arms import rows_band
from nwor.stats import HIERARCHICAL
from nwor.findings import acceptance_correlation
from nwor.machines import machine_column

logger = logging.getLogger(__name__)

ON_OFF = {False: "adaptive off", True: "adaptive on"}
COLORS = dict(zip(ON_OFF.values(), sns.color_palette("colorblind", 2)))
FOOTNOTE_WIDTH = 160  # characters per footnote line
MEAN_KEY = "adaptive.mean.latency_reduction_pct"


def _short(text, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def footnote(frame: pd.DataFrame) -> str:
    """Name the vLLM build(s), feature implementation(s) and not-measured rows (with reasons) of `frame`."""
    if "position" in frame and "run_id" in frame:  # one row per draft position: count runs, not positions
        frame = frame.drop_duplicates("run_id")
    known = lambda values: values.dropna()[~values.dropna().astype(str).str.contains("nan")]  # noqa: E731
    builds = ", ".join(sorted({str(v) for v in known(frame.get("vllm", pd.Series(dtype=object)))})) \
        or "vLLM build unknown"
    impls = known(frame.get("feature_impl", pd.Series(dtype=object))).value_counts()
    impl = ", ".join(f"{name} ({count})" for name, count in impls.items()) or "unknown"
    status = frame["pair_status"] if "pair_status" in frame else frame.get("status", pd.Series(dtype=object))
    bad = frame[status.notna() & (status != "ok")] if len(status) else frame.iloc[0:0]
    text = f"{builds}. feature_impl: {impl}. {len(frame) - len(bad)} of {len(frame)} rows measured."
    if len(bad):
        reasons = bad["pair_reason"] if "pair_reason" in bad else bad["reason"]
        names = bad.run_id if "run_id" in bad and "pair_reason" not in bad else bad.label
        text += " Not compared: " if "pair_reason" in bad else " Not measured: "
        text += "; ".join(f"{n}: {_short(r, 110)}" for n, r in zip(names, reasons))
    return "\n".join(textwrap.wrap(text, FOOTNOTE_WIDTH))


def finish(fig: plt.Figure, frame: pd.DataFrame, title: str) -> plt.Figure:
    fig.suptitle(title, fontsize=12)
    note = footnote(frame)
    # Grow the figure by the footnote's height instead of squeezing the axes: long lists of
    # not-measured runs would otherwise leave tight_layout no room (it warns and gives up).
    lines = note.count("\n") + 1
    extra_in, height_in = 0.13 * lines + 0.15, fig.get_figheight()
    fig.set_figheight(height_in + extra_in)
    fig.tight_layout(rect=(0, extra_in / (height_in + extra_in), 1, 0.97))
    fig.text(0.01, 0.01, note, fontsize=7, va="bottom", ha="left", color="0.3")
    return fig


def no_data(ax: plt.Axes, reason: str) -> None:
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"no data ({reason})", 50)), ha="center", va="center",
            transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def reason_of(frame: pd.DataFrame, column: str, fallback: str) -> str:
    reasons = frame[column].dropna().unique() if column in frame else []
    return "; ".join(str(r) for r in reasons[:2]) or fallback


def error_bars(frame: pd.DataFrame, name: str) -> np.ndarray:
    # asymmetric error bars from CI columns; NaN CIs draw no bar
    low = (frame[name] - frame[f"{name}_ci_low"]).to_numpy(dtype=float)
    high = (frame[f"{name}_ci_high"] - frame[name]).to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([low, high]))


def plot_latency_by_workload(adaptive: pd.DataFrame, numbers: pd.DataFrame | None = None,
                             aa: pd.DataFrame | None = None) -> plt.Figure:
    """Mean batch latency per workload with adaptive off/on, and the latency reduction %, with 95 % CIs.

    Args:
        adaptive: `nwor.compare.compare_adaptive` output.
        numbers: optional `nwor.findings.key_numbers` output; its across-workload mean is drawn as a band.
        aa: optional `nwor.arms.calibration` output; the A/A band of the comparisons' design is shaded.
    """
    average = None
    if numbers is not None and MEAN_KEY in set(numbers.key):
        average = numbers.set_index("key").loc[MEAN_KEY]
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.5 * len(adaptive) + 2.5), sharey=True)
    y = np.arange(len(adaptive))
    for offset, role, flag in ((-0.2, "baseline", False), (0.2, "treatment", True)):
        column = f"{role}_latency_s"
        if column in adaptive:
            left.barh(y + offset, adaptive[column], height=0.4, xerr=error_bars(adaptive, column), capsize=2,
                      color=COLORS[ON_OFF[flag]], label=ON_OFF[flag])
    left.set(yticks=y, yticklabels=adaptive.label, xlabel="mean batch latency (s, log scale)")
    if adaptive[["baseline_latency_s", "treatment_latency_s"]].notna().any().any():
        left.set_xscale("log")  # a log axis needs one positive value
        left.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))  # labels within one decade too
        left.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        left.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        left.text(0.5, 0.5, "no data (no workload was compared)", ha="center", va="center",
                  transform=left.transAxes, color="0.4")
    left.set_ylim(len(adaptive) - 0.5, -0.5)  # every workload keeps its row, measured or not (inverted)
    left.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=8, frameon=False)
    measured = adaptive.latency_reduction_pct.notna()
    for aware in (True, False):  # hollow: a batch-only interval (one engine per arm), which carries no verdict
        shown = measured & ((adaptive.method == HIERARCHICAL) == aware)
        right.errorbar(adaptive.latency_reduction_pct[shown], y[shown.to_numpy()], fmt="o", capsize=3, color="k",
                       xerr=error_bars(adaptive[shown], "latency_reduction_pct"), mfc="k" if aware else "white")
    for i, row in enumerate(adaptive.itertuples()):
        if not measured.iloc[i]:
            right.text(0.02, i, "\n".join(textwrap.wrap(_short(f"not measured: {row.reason}", 120), 60)),
                       va="center", fontsize=7, color="tab:red", transform=right.get_yaxis_transform())
        else:
            verdict = str(row.latency_reduction_pct_verdict).split(":")[0]  # "no verdict", without the why
            right.annotate(verdict, (row.latency_reduction_pct, i), xytext=(0, 7), textcoords="offset points",
                           ha="center", fontsize=7, color="0.3")
    right.axvline(0, color="0.5", lw=1)
    designs = adaptive.get("design", pd.Series(dtype=object)).dropna().unique()
    if aa is not None and len(designs):
        band, note = rows_band(aa, adaptive[adaptive.design == designs[0]], designs[0])
        if band is not None:  # reductions are negated changes
            right.axvspan(-band[1], -band[0], color="0.5", alpha=0.25, label=f"A/A band ({designs[0]})")
        else:
            right.set_title(_short(note, 90), fontsize=8, color="tab:red")
    if average is not None and pd.notna(average.ci_low):
        right.axvspan(average.ci_low, average.ci_high, color="tab:green", alpha=0.15,
                      label=f"mean of workloads {average.value:+.1f}% [{average.ci_low:+.1f}, {average.ci_high:+.1f}]")
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="best", fontsize=8)  # "best" avoids the not-measured notes (texts count)
    right.set(xlabel="latency reduction, adaptive on (%, 95% CI; > 0 is faster)\n"
                     "filled: instance-aware; hollow: batch-only, no verdict")
    return finish(fig, adaptive, "Latency by workload, adaptive draft length off vs on")


def plot_draft_tokens_and_acceptance(acceptance: pd.DataFrame) -> plt.Figure:
    """Draft tokens proposed (`spec_num_draft_tokens`) and draft acceptance rate per workload, off vs on.

    Args:
        acceptance: `nwor.views.acceptance_by_workload` output (one row per run).
    """
    sns.set_theme(style="whitegrid")
    frame = acceptance.assign(mode=acceptance.adaptive.map(ON_OFF))
    columns = ("spec_num_draft_tokens", "draft_acceptance_rate")
    drawn = any(frame[c].notna().any() for c in columns)
    # Without a single bar the panels only say why: one row per workload would stretch them to metres.
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * frame.label.nunique() + 2.5 if drawn else 3.5), sharey=True)
    for ax, column, xlabel in ((axes[0], "spec_num_draft_tokens", "draft tokens proposed (log scale)"),
                               (axes[1], "draft_acceptance_rate", "draft acceptance rate (accepted / drafted)")):
        data = frame.dropna(subset=[column]).astype({column: float})
        if data.empty:
            no_data(ax, reason_of(frame, "reason", f"{column} is null in every run"))
            continue
        sns.barplot(data=data, y="label", x=column, hue="mode", palette=COLORS, ax=ax, errorbar=None,
                    order=list(dict.fromkeys(frame.label)))
        ax.set(xlabel=xlabel, ylabel="", xscale="log" if column == "spec_num_draft_tokens" else "linear")
        ax.legend(title=None, fontsize=8)
    labels = list(dict.fromkeys(frame.label))
    for row in frame[frame.status != "ok"].itertuples() if drawn else ():
        offset = 0.2 if row.adaptive is True else -0.2  # the bar slot seaborn leaves empty for this run
        axes[1].text(0.01, labels.index(row.label) + offset, _short(f"{row.mode}: {row.reason}", 70),
                     va="center", fontsize=7, color="tab:red", transform=axes[1].get_yaxis_transform())
    return finish(fig, frame, "Draft tokens and acceptance by workload")


def plot_acceptance_per_position(per_position: pd.DataFrame) -> plt.Figure:
    """Acceptance rate at each draft position (`metrics.acceptance_rate_per_pos`), one panel per workload.

    Args:
        per_position: `nwor.views.acceptance_per_position` output.
    """
    sns.set_theme(style="whitegrid")
    labels = list(dict.fromkeys(per_position.label)) or ["-"]
    ncols = min(4, len(labels))
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows + 1), sharex=True, sharey=True,
                             squeeze=False)
    if per_position.empty:
        no_data(axes[0][0], "acceptance_rate_per_pos is null in every run")
    frame = per_position.assign(mode=per_position.adaptive.map(ON_OFF))
    for ax, label in zip(axes.flat, labels):
        data = frame[(frame.label == label) & frame.position.notna()]
        if not data.empty:
            sns.lineplot(data=data, x="position", y="acceptance_rate", hue="mode", palette=COLORS, marker="o",
                         ax=ax, legend=ax is axes.flat[0])
        missing = frame[(frame.label == label) & frame.position.isna()]
        for i, row in enumerate(missing.itertuples()):
            ax.text(0.03, 0.05 + 0.1 * i, _short(f"{row.mode}: {row.reason}", 45), transform=ax.transAxes,
                    fontsize=6, color="tab:red")
        ax.set(title=label, xlabel="draft position", ylabel="acceptance rate", ylim=(0, 1))
        ax.title.set_fontsize(9)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(title=None, fontsize=7)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    return finish(fig, per_position, "Acceptance rate per draft position")


def plot_acceptance_vs_improvement(adaptive: pd.DataFrame) -> plt.Figure:
    """Baseline acceptance rate vs latency reduction % per workload, with Pearson r and its 95 % CI.

    Args:
        adaptive: `nwor.compare.compare_adaptive` output.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 5))
    ok = adaptive[(adaptive.status == "ok") & adaptive.latency_reduction_pct.notna()]
    if ok.empty:
        no_data(ax, reason_of(adaptive, "reason", "no paired workload"))
        return finish(fig, adaptive, "Acceptance rate vs latency reduction")
    x = ok.baseline_draft_acceptance_rate.astype(float)
    ax.errorbar(x, ok.latency_reduction_pct, yerr=error_bars(ok, "latency_reduction_pct"), fmt="o", capsize=3)
    for row, xi in zip(ok.itertuples(), x):
        ax.annotate(row.label, (xi, row.latency_reduction_pct), xytext=(4, 4), textcoords="offset points",
                    fontsize=7)
    ax.axhline(0, color="0.5", lw=1)
    corr = acceptance_correlation(adaptive)
    summary = corr.note or (f"Pearson r = {corr.r:+.2f} (95% CI {corr.ci_low:+.2f} to {corr.ci_high:+.2f}), "
                            f"p = {corr.p_value:.3f}, n = {corr.n}")
    ax.set(xlabel="draft acceptance rate with adaptive off", ylabel="latency reduction with adaptive on (%)",
           title=summary)
    ax.title.set_fontsize(9)
    return finish(fig, adaptive, "Acceptance rate vs latency reduction")


def plot_calibration(aa: pd.DataFrame, arms: pd.DataFrame | None = None) -> plt.Figure:
    """The A/A differences with their intervals, per design, and the plugin-overhead arms against that band.

    Args:
        aa: `nwor.arms.calibration` output (one row per A/A comparison).
        arms: optional `nwor.compare.compare_arms` output; its calibration_grid rows (the plugin's arms) are drawn.
    """
    sns.set_theme(style="whitegrid")
    if arms is not None and len(arms):
        arms = arms[arms.grid == "calibration_grid"]
    machines = machine_column(aa)  # A/A runs of several machines (an assembled study) each name theirs
    rows = [(f"A/A {r.design}: {r.arm} vs {r.reference_arm}{f', {m}' if machines.nunique() > 1 else ''}"
             f"\n{r.instances}", r.latency_change_pct, r.latency_change_pct_ci_low, r.latency_change_pct_ci_high,
             "tab:gray", r.method) for r, m in zip(aa.itertuples(), machines)]
    rows += [(f"{r.arm} vs {r.reference_arm} ({r.design})\n{r.instances}", r.latency_overhead_pct,
              r.latency_overhead_pct_ci_low, r.latency_overhead_pct_ci_high, "tab:blue", r.method)
             for r in (arms if arms is not None else pd.DataFrame()).itertuples()]
    fig, ax = plt.subplots(figsize=(10, 0.7 * max(len(rows), 2) + 1.8))
    if aa.empty:
        no_data(ax, "NO A/A RUN in this profile: no effect in this report is calibrated against noise")
        return finish(fig, aa.assign(status="missing", reason="no A/A run"), "A/A calibration")
    for i, (label, value, low, high, color, method) in enumerate(rows):
        # hollow: a batch-only interval (one engine per arm), which carries no verdict
        ax.errorbar([value], [i], xerr=np.nan_to_num([[value - low], [high - value]]), fmt="o", capsize=4,
                    color=color, mfc=color if method == HIERARCHICAL else "white")
        ax.annotate(f"{value:+.1f}% [{low:+.1f}, {high:+.1f}]", (value, i), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=7, color="0.3")
    for design, color in zip(sorted(set(aa.design)), ("tab:orange", "tab:green", "tab:purple")):
        band, note = rows_band(aa, aa[aa.design == design], design)  # one machine's band, or none
        if band is not None:
            ax.axvspan(*band, color=color, alpha=0.12, label=f"A/A band, {design}: {band[0]:+.1f} to {band[1]:+.1f}%")
    ax.axvline(0, color="0.5", lw=1)
    ax.set(yticks=range(len(rows)), yticklabels=[r[0] for r in rows], ylim=(len(rows) - 0.5, -0.5),
           xlabel="change in mean batch latency (%, 95% CI; filled: instance-aware, hollow: batch-only, "
                  "no verdict; > 0 is slower)")
    ax.tick_params(axis="y", labelsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    frame = pd.concat([aa, arms if arms is not None else pd.DataFrame()], ignore_index=True)
    return finish(fig, frame.assign(status="ok"), "A/A calibration: what noise alone does, and the plugin's overhead")


def save_figure(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """Write `fig` as `<folder>/<name>.png` and `.svg` (creating the folder) and close it.

    Raises:
        OSError: the folder cannot be created or written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    logger.info("saved %s", ", ".join(map(str, paths)))
    return paths


def show_figure(fig: plt.Figure | str, folder: str | Path, name: str):
    """A report cell's output: the figure, saved as `<folder>/<name>`, or a Markdown note where a plot function
    returned one (its string says why there is nothing to draw).

    Raises:
        OSError: the figure cannot be written.
    """
    from IPython.display import Markdown

    if isinstance(fig, str):
        return Markdown(fig)
    save_figure(fig, folder, name)
    return fig
