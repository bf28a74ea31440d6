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

from nwor import stats
from nwor.analysis import MAX_LATENCY_OVERHEAD_PCT

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


def _finish(fig: plt.Figure, frame: pd.DataFrame, title: str) -> plt.Figure:
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


def _no_data(ax: plt.Axes, reason: str) -> None:
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"no data ({reason})", 50)), ha="center", va="center",
            transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _reason_of(frame: pd.DataFrame, column: str, fallback: str) -> str:
    reasons = frame[column].dropna().unique() if column in frame else []
    return "; ".join(str(r) for r in reasons[:2]) or fallback


def _errors(frame: pd.DataFrame, name: str) -> np.ndarray:
    # asymmetric error bars from CI columns; NaN CIs draw no bar
    low = (frame[name] - frame[f"{name}_ci_low"]).to_numpy(dtype=float)
    high = (frame[f"{name}_ci_high"] - frame[name]).to_numpy(dtype=float)
    return np.nan_to_num(np.vstack([low, high]))


def plot_latency_by_workload(adaptive: pd.DataFrame, numbers: pd.DataFrame | None = None) -> plt.Figure:
    """Mean batch latency per workload with adaptive off/on, and the latency reduction %, with 95 % CIs.

    Args:
        adaptive: `nwor.stats.compare_adaptive` output.
        numbers: optional `nwor.stats.key_numbers` output; its across-workload mean is drawn as a band.
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
            left.barh(y + offset, adaptive[column], height=0.4, xerr=_errors(adaptive, column), capsize=2,
                      color=COLORS[ON_OFF[flag]], label=ON_OFF[flag])
    left.set(yticks=y, yticklabels=adaptive.label, xscale="log", xlabel="mean batch latency (s, log scale)")
    left.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(ticker.NullFormatter())
    left.set_ylim(len(adaptive) - 0.5, -0.5)  # every workload keeps its row, measured or not (inverted)
    left.legend(loc="lower right")
    measured = adaptive.latency_reduction_pct.notna()
    right.errorbar(adaptive.latency_reduction_pct[measured], y[measured.to_numpy()],
                   xerr=_errors(adaptive[measured], "latency_reduction_pct"), fmt="o", capsize=3, color="k")
    for i, row in enumerate(adaptive.itertuples()):
        if not measured.iloc[i]:
            right.text(0.02, i, "\n".join(textwrap.wrap(_short(f"not measured: {row.reason}", 120), 60)),
                       va="center", fontsize=7, color="tab:red", transform=right.get_yaxis_transform())
        else:
            right.annotate(row.latency_reduction_pct_verdict, (row.latency_reduction_pct, i), xytext=(0, 7),
                           textcoords="offset points", ha="center", fontsize=7, color="0.3")
    right.axvline(0, color="0.5", lw=1)
    if average is not None:
        right.axvspan(average.ci_low, average.ci_high, color="tab:green", alpha=0.15,
                      label=f"mean of workloads {average.value:+.1f}% [{average.ci_low:+.1f}, {average.ci_high:+.1f}]")
        right.legend(loc="lower right", fontsize=8)
    right.set(xlabel="latency reduction with adaptive on (%, 95% CI; > 0 is faster)")
    return _finish(fig, adaptive, "Latency by workload, adaptive draft length off vs on")


def plot_draft_tokens_and_acceptance(acceptance: pd.DataFrame) -> plt.Figure:
    """Draft tokens proposed (`spec_num_draft_tokens`) and draft acceptance rate per workload, off vs on.

    Args:
        acceptance: `nwor.analysis.acceptance_by_workload` output (one row per run).
    """
    sns.set_theme(style="whitegrid")
    frame = acceptance.assign(mode=acceptance.adaptive.map(ON_OFF))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * frame.label.nunique() + 2.5), sharey=True)
    for ax, column, xlabel in ((axes[0], "spec_num_draft_tokens", "draft tokens proposed (log scale)"),
                               (axes[1], "draft_acceptance_rate", "draft acceptance rate (accepted / drafted)")):
        data = frame.dropna(subset=[column]).astype({column: float})
        if data.empty:
            _no_data(ax, _reason_of(frame, "reason", f"{column} is null in every run"))
            continue
        sns.barplot(data=data, y="label", x=column, hue="mode", palette=COLORS, ax=ax, errorbar=None,
                    order=list(dict.fromkeys(frame.label)))
        ax.set(xlabel=xlabel, ylabel="", xscale="log" if column == "spec_num_draft_tokens" else "linear")
        ax.legend(title=None, fontsize=8)
    labels = list(dict.fromkeys(frame.label))
    for row in frame[frame.status != "ok"].itertuples():
        offset = 0.2 if row.adaptive is True else -0.2  # the bar slot seaborn leaves empty for this run
        axes[1].text(0.01, labels.index(row.label) + offset, _short(f"{row.mode}: {row.reason}", 70),
                     va="center", fontsize=7, color="tab:red", transform=axes[1].get_yaxis_transform())
    return _finish(fig, frame, "Draft tokens and acceptance by workload")


def plot_acceptance_per_position(per_position: pd.DataFrame) -> plt.Figure:
    """Acceptance rate at each draft position (`metrics.acceptance_rate_per_pos`), one panel per workload.

    Args:
        per_position: `nwor.analysis.acceptance_per_position` output.
    """
    sns.set_theme(style="whitegrid")
    labels = list(dict.fromkeys(per_position.label)) or ["-"]
    ncols = min(4, len(labels))
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows + 1), sharex=True, sharey=True,
                             squeeze=False)
    if per_position.empty:
        _no_data(axes[0][0], "acceptance_rate_per_pos is null in every run")
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
    return _finish(fig, per_position, "Acceptance rate per draft position")


def plot_acceptance_vs_improvement(adaptive: pd.DataFrame) -> plt.Figure:
    """Baseline acceptance rate vs latency reduction % per workload, with Pearson r and its 95 % CI.

    Args:
        adaptive: `nwor.stats.compare_adaptive` output.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 5))
    ok = adaptive[(adaptive.status == "ok") & adaptive.latency_reduction_pct.notna()]
    if ok.empty:
        _no_data(ax, _reason_of(adaptive, "reason", "no paired workload"))
        return _finish(fig, adaptive, "Acceptance rate vs latency reduction")
    x = ok.baseline_draft_acceptance_rate.astype(float)
    ax.errorbar(x, ok.latency_reduction_pct, yerr=_errors(ok, "latency_reduction_pct"), fmt="o", capsize=3)
    for row, xi in zip(ok.itertuples(), x):
        ax.annotate(row.label, (xi, row.latency_reduction_pct), xytext=(4, 4), textcoords="offset points",
                    fontsize=7)
    ax.axhline(0, color="0.5", lw=1)
    corr = stats.acceptance_correlation(adaptive)
    summary = corr.note or (f"Pearson r = {corr.r:+.2f} (95% CI {corr.ci_low:+.2f} to {corr.ci_high:+.2f}), "
                            f"p = {corr.p_value:.3f}, n = {corr.n}")
    ax.set(xlabel="draft acceptance rate with adaptive off", ylabel="latency reduction with adaptive on (%)",
           title=summary)
    ax.title.set_fontsize(9)
    return _finish(fig, adaptive, "Acceptance rate vs latency reduction")


def plot_threshold_tradeoff(early_exit: pd.DataFrame) -> plt.Figure:
    """DRAM write bytes and latency vs confidence threshold, and DRAM saving vs latency overhead.

    Args:
        early_exit: `nwor.stats.compare_early_exit` output.
    """
    sns.set_theme(style="whitegrid")
    fig, (dram, latency, trade) = plt.subplots(1, 3, figsize=(16, 5))
    measured = early_exit[early_exit.dram_bytes_write.notna()].astype({"dram_bytes_write": float})
    if measured.empty:
        _no_data(dram, _reason_of(early_exit, "dram_reason", "no DRAM totals"))
    else:
        sns.lineplot(data=measured.assign(gib=measured.dram_bytes_write / 2 ** 30), x="confidence_threshold",
                     y="gib", hue="label", marker="o", ax=dram)
        dram.legend(title=None, fontsize=8)
        dram.set(ylabel="DRAM writes (GiB, ncu)")
    dram.set(xlabel="confidence threshold")
    timed = early_exit[early_exit.latency_s.notna()]
    if timed.empty:
        _no_data(latency, _reason_of(early_exit, "reason", "no latency samples"))
    for label, data in timed.groupby("label", sort=False):
        latency.errorbar(data.confidence_threshold, data.latency_s, yerr=_errors(data, "latency_s"), fmt="o-",
                         capsize=3, label=label)
    if not timed.empty:
        latency.legend(fontsize=8)
    latency.set(xlabel="confidence threshold", ylabel="mean batch latency (s, 95% CI)")
    pairs = early_exit[early_exit.dram_write_reduction_pct.notna() & early_exit.latency_overhead_pct.notna()]
    if pairs.empty:
        treated = early_exit[early_exit.role == "treatment"]
        _no_data(trade, _reason_of(treated, "dram_reason", "") or _reason_of(treated, "pair_reason", "no pairs"))
    else:
        trade.errorbar(pairs.latency_overhead_pct, pairs.dram_write_reduction_pct,
                       xerr=_errors(pairs, "latency_overhead_pct"), fmt="o", capsize=3)
        for row in pairs.itertuples():
            trade.annotate(f"{row.confidence_threshold} ({row.label})", (row.latency_overhead_pct,
                           row.dram_write_reduction_pct), xytext=(4, 4), textcoords="offset points", fontsize=7)
        trade.axvline(0, color="0.5", lw=1)
        trade.axvline(MAX_LATENCY_OVERHEAD_PCT, color="tab:red", lw=1, ls="--",
                      label=f"recommendation limit +{MAX_LATENCY_OVERHEAD_PCT}%")
        trade.legend(fontsize=8, loc="lower right")
    trade.set(xlabel="latency overhead vs threshold 0.0 (%, 95% CI)", ylabel="DRAM write reduction (%)")
    return _finish(fig, early_exit, "Confidence early exit: bandwidth savings vs latency")


def plot_tokens_stopped(early_exit: pd.DataFrame) -> plt.Figure:
    """Share of draft tokens stopped by the early exit (`early_exit.stop_pct`) per threshold.

    Args:
        early_exit: `nwor.stats.compare_early_exit` output.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = early_exit[early_exit.stop_pct.notna()].astype({"stop_pct": float})
    if data.empty:
        _no_data(ax, _reason_of(early_exit, "early_exit_reason", "stop_pct is null in every run"))
    else:
        sns.lineplot(data=data, x="confidence_threshold", y="stop_pct", hue="label", marker="o", ax=ax)
        ax.legend(title=None, fontsize=8)
    ax.set(xlabel="confidence threshold", ylabel="tokens stopped (%)")
    return _finish(fig, early_exit, "Tokens stopped by confidence early exit")


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
