"""The fork's early-exit log sentence, for grid logs: `grep "Confidence early exit stats" experiment.log`."""
from __future__ import annotations

# elastic-speculation (older branch) vllm/v1/spec_decode/eagle.py logs, every 10,000 checks:
#   f"Confidence early exit stats: {total_stopped} tokens stopped out of {total_checks} checks ({stop_rate:.2f}%)"
STATS_LINE_PREFIX = "Confidence early exit stats:"
EARLY_EXIT_GRID = "early_exit_grid"  # the seed grid whose log the seed workflow greps


def format_stats_line(tokens_stopped: int, checks: int, *, run_id: str | None = None,
                      source: str | None = None) -> str:
    """The fork's line, `Confidence early exit stats: N tokens stopped out of M checks (P%)`.

    P has two decimals as in the fork; with no checks it reads `n/a`. `run_id` / `source` (e.g.
    "nwor-plugin", "fork-log") are appended in brackets so one grep over a grid log tells runs apart.

    Raises:
        ValueError: negative counts, or more tokens stopped than checks.
    """
    if tokens_stopped < 0 or checks < 0 or tokens_stopped > checks:
        raise ValueError(f"early-exit counts out of range: {tokens_stopped} stopped of {checks} checks")
    rate = f"{100.0 * tokens_stopped / checks:.2f}%" if checks else "n/a"
    line = f"{STATS_LINE_PREFIX} {tokens_stopped} tokens stopped out of {checks} checks ({rate})"
    tags = [f"{k}={v}" for k, v in (("run", run_id), ("source", source)) if v is not None]
    return line + (f" [{', '.join(tags)}]" if tags else "")


def line_for_result(result: dict) -> str | None:
    """The line for one run's result JSON, from its `early_exit` block (`source`: whoever measured it).

    Every early-exit run gets one, so one grep over the grid's log lists them all: a threshold-0.0 run of
    the early-exit grid (its baseline) reads `0 ... out of 0 checks (n/a)`, source "gate off (threshold 0.0)",
    since no confidence check ran. None for other threshold-0.0 runs, and when nothing was measured (failed
    run, no counts).
    """
    threshold = (result.get("spec") or {}).get("confidence_threshold") or 0.0
    if not threshold > 0.0:
        if result.get("grid") != EARLY_EXIT_GRID or result.get("status") != "ok":
            return None
        return format_stats_line(0, 0, run_id=result.get("run_id"), source="gate off (threshold 0.0)")
    block = result.get("early_exit") or {}
    stopped, checks = block.get("tokens_stopped"), block.get("checks")
    if block.get("status") != "ok" or stopped is None or checks is None:
        return None
    return format_stats_line(int(stopped), int(checks), run_id=result.get("run_id"), source=block.get("source"))
