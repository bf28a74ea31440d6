"""Early exit measured where it acts (issue 12): drafter KV-write bytes from the ncu KV-write sub-pass, the fork's
claim line by line, and the report's KV-write figure, on the committed H100 session 5 results (real ncu data)."""
from pathlib import Path

import math

import matplotlib
import pytest

from nwor import analysis, arms, compare, fork_claims, pairing, plots_early_exit

matplotlib.use("Agg")
SESSION5 = Path(__file__).parents[1] / "outputs" / "gpu-h100-protocol" / "session5"
SMOKE_FIXTURES = Path(__file__).parent / "fixtures" / "results"
# One EAGLE layer of the 8B-shaped head writes K and V for 8 KV heads x 128 dims in bf16 per token.
DRAFTER_KV_BYTES_PER_TOKEN = 2 * 8 * 128 * 2


def early_exit(root, profile):
    frames = analysis.load_profile(root, profile)
    return compare.compare_early_exit(frames, pairing.pair_early_exit(frames.runs),
                                      arms.calibration(arms.within_run(frames))).set_index("confidence_threshold")


@pytest.fixture(scope="module")
def h100():
    return early_exit(SESSION5, "gpu-smoke")


def test_drafter_kv_bytes_and_their_reduction_come_from_the_sub_pass(h100):
    base, gated = h100.loc[0.0], h100.loc[0.5]
    assert base.kv_drafter_bytes == 57_717_440 and gated.kv_drafter_bytes == 47_546_624
    assert gated.kv_drafter_write_reduction_pct == pytest.approx(100 * (1 - 47_546_624 / 57_717_440))
    per_token = (57_717_440 / 4070, 47_546_624 / 4320)  # each window's own drafted tokens
    assert gated.kv_drafter_write_reduction_per_draft_token_pct == pytest.approx(
        100 * (1 - per_token[1] / per_token[0]))
    assert gated.kv_window_tokens_stopped == 2177 and math.isnan(base.kv_drafter_write_reduction_pct)


def test_bytes_saved_per_stopped_token_match_the_drafters_kv_size(h100):
    """The cross-check docs/ncu.md names: every stopped draft position skips one 4 KiB drafter KV write. The two
    windows draft slightly different token counts, so the match is approximate, not exact."""
    saved = h100.loc[0.5].kv_saved_bytes_per_stopped_token
    assert saved == pytest.approx(DRAFTER_KV_BYTES_PER_TOKEN, rel=0.25)


def test_the_forks_claim_line_by_line(h100):
    rows = fork_claims.check_early_exit(h100.reset_index()).set_index(["setting", "measured"])
    gated = rows.loc["threshold 0.5"]
    assert gated.loc["draft positions the gate stopped (stop %, counter)"].verdict == "within the claim"
    assert gated.loc["drafter KV-write bytes, whole window (ncu KV-write sub-pass)"].verdict == "below the claim"
    latency = gated.loc["latency overhead vs threshold 0.0"]
    assert latency.verdict == "above the claim (whole interval) - batch-only interval, not a verdict"
    assert latency.ci_low > 3
    assert "1 paired instance" in latency.note  # a batch-only interval says so


@pytest.mark.parametrize("value, low, high, said", [
    (50.0, math.nan, math.nan, "within the claim"), (17.6, math.nan, math.nan, "below the claim"),
    (9.3, 3.5, 15.2, "above the claim (whole interval)"),
    (2.0, -1.0, 5.0, "consistent with the claim (interval overlaps it)"),
    (0.2, -0.5, 0.9, "below the claim (whole interval)"), (math.nan, math.nan, math.nan, "not measured")])
def test_verdict_against_a_claimed_range(value, low, high, said):
    assert fork_claims.verdict(value, low, high, (1.0, 3.0) if not math.isnan(low) else (40.0, 60.0)) == said


def test_results_without_a_kv_sub_pass_say_why():
    rows = early_exit(SMOKE_FIXTURES, "smoke")
    assert rows.kv_drafter_bytes.isna().all() and rows.kv_reason.notna().all()


def test_kv_figure_draws_the_measured_rows_and_the_claims(h100):
    fig = plots_early_exit.plot_kv_writes(h100.reset_index())
    written, saved, latency = fig.axes[:3]
    assert [round(y, 2) for y in written.lines[0].get_ydata()] == [55.04, 45.34]
    assert {text.get_text() for text in saved.get_legend().get_texts()} >= {"fork's claim: ~50 % fewer"}
    empty = plots_early_exit.plot_kv_writes(early_exit(SMOKE_FIXTURES, "smoke").reset_index())
    assert any(text.get_text() for text in empty.axes[0].texts)  # the reason, not an empty plot
