"""Report figures for the confidence early exit: bandwidth saved vs latency, KV-cache writes, tokens stopped."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nwor.arms import rows_band
from nwor.findings import MAX_LATENCY_OVERHEAD_PCT
from nwor.fork_claims import EARLY_EXIT_LATENCY_CLAIM_PCT, KV_WRITES_CLAIM_PCT
from nwor.plots import error_bars, finish, no_data, reason_of


def plot_threshold_tradeoff(early_exit: pd.DataFrame, aa: pd.DataFrame | None = None) -> plt.Figure:
    """DRAM write bytes and latency vs confidence threshold, and DRAM saving vs latency overhead.

    Args:
        early_exit: `nwor.compare.compare_early_exit` output.
        aa: optional `nwor.arms.calibration` output; the A/A band of the overheads' design is shaded.
    """
    sns.set_theme(style="whitegrid")
    fig, (dram, latency, trade) = plt.subplots(1, 3, figsize=(16, 5))
    measured = early_exit[early_exit.dram_bytes_write.notna()].astype({"dram_bytes_write": float})
    if measured.empty:
        no_data(dram, reason_of(early_exit, "dram_reason", "no DRAM totals"))
    else:
        sns.lineplot(data=measured.assign(gib=measured.dram_bytes_write / 2 ** 30), x="confidence_threshold",
                     y="gib", hue="label", marker="o", ax=dram)
        dram.legend(title=None, fontsize=8)
        dram.set(ylabel="DRAM writes (GiB, ncu)")
    dram.set(xlabel="confidence threshold")
    timed = early_exit[early_exit.latency_s.notna()]
    if timed.empty:
        no_data(latency, reason_of(early_exit, "reason", "no latency samples"))
    for label, data in timed.groupby("label", sort=False):
        latency.errorbar(data.confidence_threshold, data.latency_s, yerr=error_bars(data, "latency_s"), fmt="o-",
                         capsize=3, label=label)
    if not timed.empty:
        latency.legend(fontsize=8)
    latency.set(xlabel="confidence threshold", ylabel="mean batch latency (s, 95% CI)")
    pairs = early_exit[early_exit.dram_write_reduction_pct.notna() & early_exit.latency_overhead_pct.notna()]
    if pairs.empty:
        treated = early_exit[early_exit.role == "treatment"]
        no_data(trade, reason_of(treated, "dram_reason", "") or reason_of(treated, "pair_reason", "no pairs"))
    else:
        trade.errorbar(pairs.latency_overhead_pct, pairs.dram_write_reduction_pct,
                       xerr=error_bars(pairs, "latency_overhead_pct"), fmt="o", capsize=3)
        for row in pairs.itertuples():
            trade.annotate(f"{row.confidence_threshold} ({row.label})", (row.latency_overhead_pct,
                           row.dram_write_reduction_pct), xytext=(4, 4), textcoords="offset points", fontsize=7)
        trade.axvline(0, color="0.5", lw=1)
        design = pairs.design.dropna().iloc[0] if pairs.design.notna().any() else None
        band = rows_band(aa, pairs[pairs.design == design], design)[0] if aa is not None and design else None
        if band is not None:
            trade.axvspan(*band, color="0.5", alpha=0.25, label=f"A/A band ({design})")
        trade.axvline(MAX_LATENCY_OVERHEAD_PCT, color="tab:red", lw=1, ls="--",
                      label=f"recommendation limit +{MAX_LATENCY_OVERHEAD_PCT}%")
        trade.legend(fontsize=8, loc="lower right")
    trade.set(xlabel="latency overhead vs threshold 0.0 (%, instance-aware 95% CI)", ylabel="DRAM write reduction (%)")
    return finish(fig, early_exit, "Confidence early exit: bandwidth savings vs latency")


def plot_tokens_stopped(early_exit: pd.DataFrame) -> plt.Figure:
    """Share of draft tokens stopped by the early exit (`early_exit.stop_pct`) per threshold.

    Args:
        early_exit: `nwor.compare.compare_early_exit` output.
    """
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = early_exit[early_exit.stop_pct.notna()].astype({"stop_pct": float})
    if data.empty:
        no_data(ax, reason_of(early_exit, "early_exit_reason", "stop_pct is null in every run"))
    else:
        sns.lineplot(data=data, x="confidence_threshold", y="stop_pct", hue="label", marker="o", ax=ax)
        ax.legend(title=None, fontsize=8)
    ax.set(xlabel="confidence threshold", ylabel="tokens stopped (%)")
    return finish(fig, early_exit, "Tokens stopped by confidence early exit")


def plot_kv_writes(early_exit: pd.DataFrame) -> plt.Figure:
    """Early exit where it acts: drafter KV-cache write bytes vs threshold, beside stop % and latency.

    From the ncu KV-write sub-pass (`ncu.kv_cache_writes`, docs/ncu.md); the fork's claim (~50 % fewer
    speculative KV writes at 1-3 % latency, `nwor.fork_claims`) is drawn on the two right panels.

    Args:
        early_exit: `nwor.compare.compare_early_exit` output.
    """
    sns.set_theme(style="whitegrid")
    fig, (written, saved, latency) = plt.subplots(1, 3, figsize=(16, 5))
    measured = early_exit[early_exit.kv_drafter_bytes.notna()] if "kv_drafter_bytes" in early_exit else early_exit[:0]
    if measured.empty:
        no_data(written, reason_of(early_exit, "kv_reason", "no KV-write sub-pass"))
    else:
        sns.lineplot(data=measured.assign(mib=measured.kv_drafter_bytes.astype(float) / 2 ** 20),
                     x="confidence_threshold", y="mib", hue="label", marker="o", ax=written)
        written.legend(title=None, fontsize=8)
    written.set(xlabel="confidence threshold", ylabel="drafter KV-cache writes (MiB, ncu L2 write bytes)")
    treated = early_exit[early_exit.role == "treatment"] if len(early_exit) else early_exit
    kv_saved = treated.get("kv_drafter_write_reduction_pct", pd.Series(float("nan"), index=treated.index))
    shown = treated[treated.stop_pct.notna() | kv_saved.notna()]
    if shown.empty:
        no_data(saved, reason_of(treated, "kv_reason", "no early-exit treatment measured"))
    for label, data in shown.groupby("label", sort=False):
        saved.plot(data.confidence_threshold, data.stop_pct, "o--", label=f"{label}: positions stopped (counter)")
        if data.get("kv_drafter_write_reduction_pct", data.stop_pct[:0]).notna().any():
            saved.plot(data.confidence_threshold, data.kv_drafter_write_reduction_pct, "s-",
                       label=f"{label}: drafter KV bytes (ncu)")
    saved.axhspan(*KV_WRITES_CLAIM_PCT, color="tab:purple", alpha=0.15, label="fork's claim: ~50 % fewer")
    saved.legend(fontsize=7)
    saved.set_ylim(bottom=0)
    saved.set(xlabel="confidence threshold", ylabel="KV writes saved vs threshold 0.0 (%)")
    timed = treated[treated.latency_overhead_pct.notna()] if "latency_overhead_pct" in treated else treated[:0]
    if timed.empty:
        no_data(latency, reason_of(treated, "pair_reason", "no latency comparison"))
    verdicts = timed.get("latency_overhead_pct_verdict", pd.Series("", index=timed.index)).astype(str)
    for label, data in timed.groupby("label", sort=False):
        batch_only = verdicts[data.index].str.startswith("no verdict").all()  # one engine a side
        latency.errorbar(data.confidence_threshold, data.latency_overhead_pct,
                         yerr=error_bars(data, "latency_overhead_pct"), fmt="o", capsize=3,
                         mfc="none" if batch_only else None,
                         label=f"{label} (batch-only interval)" if batch_only else label)
    latency.axhspan(*EARLY_EXIT_LATENCY_CLAIM_PCT, color="tab:purple", alpha=0.15, label="fork's claim: 1-3 %")
    latency.axhline(0, color="0.5", lw=1)
    latency.legend(fontsize=8)
    latency.set(xlabel="confidence threshold", ylabel="latency overhead vs threshold 0.0 (%, 95% CI)")
    thresholds = early_exit.confidence_threshold.dropna() if len(early_exit) else early_exit[:0]
    if len(thresholds):  # the same threshold axis on every panel, also where one has no data
        for ax in (written, saved, latency):
            ax.set_xlim(thresholds.min() - 0.05, thresholds.max() + 0.05)
    return finish(fig, early_exit, "Confidence early exit where it acts: drafter KV-cache writes")
