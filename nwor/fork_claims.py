"""The fork's published claims, set line by line against what a profile measured.

The elastic-speculation fork (IluvatarLabs/vllm) claims, for its two features:
* confidence early exit: "~50 % fewer speculative KV writes at 1-3 % latency cost";
* adaptive draft length: "20-50 % lower latency" (against the fixed draft length).
Each claim line becomes one row per measured run with the number, its interval where one exists, and a
verdict. "~50 %" is read as 40-60 %; an interval is *consistent* with a range when it overlaps it.
"""
from __future__ import annotations

import math

import pandas as pd

from nwor.analysis import first_present

KV_WRITES_CLAIM_PCT = (40.0, 60.0)       # "~50 % fewer speculative KV writes"
EARLY_EXIT_LATENCY_CLAIM_PCT = (1.0, 3.0)  # "at 1-3 % latency cost"
ADAPTIVE_LATENCY_CLAIM_PCT = (20.0, 50.0)  # "20-50 % lower latency"
COLUMNS = ["feature", "claim", "label", "setting", "measured", "value_pct", "ci_low", "ci_high", "verdict", "note"]


def verdict(value: float, low: float, high: float, claim: tuple[float, float]) -> str:
    """Where a measured percentage (with its interval, if any) falls against a claimed range."""
    if pd.isna(value):
        return "not measured"
    lo, hi = claim
    if pd.isna(low) or pd.isna(high):  # a point value: no interval to overlap with
        return "within the claim" if lo <= value <= hi else ("below the claim" if value < lo else "above the claim")
    if high < lo:
        return "below the claim (whole interval)"
    if low > hi:
        return "above the claim (whole interval)"
    return "consistent with the claim (interval overlaps it)"


def _note(instances, study_verdict, *reasons) -> str | None:
    """What an interval rests on and the study's own verdict on it (a batch-only interval gets none)."""
    said = [text for text in (first_present(instances), first_present(study_verdict)) if text]
    return "; ".join(said) if said else first_present(*reasons)


def _row(feature, claim, label, setting, measured, value, low, high, band, note, study_verdict=None) -> dict:
    said = verdict(value, low, high, band)
    if isinstance(study_verdict, str) and study_verdict.startswith("no verdict") and not pd.isna(value):
        said += " - batch-only interval, not a verdict"  # one engine a side: engine-to-engine spread unmeasured
    return dict(zip(COLUMNS, (feature, claim, label, setting, measured, value, low, high, said, note)))


def check_early_exit(early_exit: pd.DataFrame) -> pd.DataFrame:
    """The early-exit claim against each treatment run of `nwor.compare.compare_early_exit`: two measures of
    the speculative KV writes saved (the gate's counter and ncu's drafter KV-write bytes) and the latency cost."""
    rows = []
    treated = early_exit[early_exit.role == "treatment"] if len(early_exit) else early_exit
    for r in treated.itertuples():
        setting, g = f"threshold {r.confidence_threshold}", r._asdict().get
        kv_claim, lat_claim = "~50 % fewer speculative KV writes", "at 1-3 % latency cost"
        rows.append(_row("early exit", kv_claim, r.label, setting, "draft positions the gate stopped (stop %, counter)",
                         g("stop_pct", math.nan), math.nan, math.nan, KV_WRITES_CLAIM_PCT,
                         "each stopped position skips its drafter KV write: the speculative writes saved"))
        rows.append(_row("early exit", kv_claim, r.label, setting,
                         "drafter KV-write bytes, whole window (ncu KV-write sub-pass)",
                         g("kv_drafter_write_reduction_pct", math.nan), math.nan, math.nan, KV_WRITES_CLAIM_PCT,
                         first_present(g("kv_reason"),
                               "includes the drafter's prompt and first-pass writes, which no gate stops")))
        rows.append(_row("early exit", lat_claim, r.label, setting, "latency overhead vs threshold 0.0",
                         g("latency_overhead_pct", math.nan), g("latency_overhead_pct_ci_low", math.nan),
                         g("latency_overhead_pct_ci_high", math.nan), EARLY_EXIT_LATENCY_CLAIM_PCT,
                         _note(g("instances"), g("latency_overhead_pct_verdict"), g("pair_reason"), g("reason")),
                         g("latency_overhead_pct_verdict")))
    return pd.DataFrame(rows, columns=COLUMNS)


def check_adaptive(adaptive: pd.DataFrame) -> pd.DataFrame:
    """The adaptive claim against each workload of `nwor.compare.compare_adaptive`."""
    rows = []
    for r in adaptive.itertuples() if len(adaptive) else []:
        g = r._asdict().get
        rows.append(_row("adaptive draft length", "20-50 % lower latency", r.label, "adaptive on vs off",
                         "latency reduction", g("latency_reduction_pct", math.nan),
                         g("latency_reduction_pct_ci_low", math.nan), g("latency_reduction_pct_ci_high", math.nan),
                         ADAPTIVE_LATENCY_CLAIM_PCT,
                         _note(g("instances"), g("latency_reduction_pct_verdict"), g("reason")),
                         g("latency_reduction_pct_verdict")))
    return pd.DataFrame(rows, columns=COLUMNS)


def check(adaptive: pd.DataFrame, early_exit: pd.DataFrame) -> pd.DataFrame:
    """Every claim line, adaptive first, then early exit."""
    parts = [frame for frame in (check_adaptive(adaptive), check_early_exit(early_exit)) if len(frame)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
