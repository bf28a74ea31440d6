"""`nwor run`'s progress display: a suite bar, a per-run bar against the estimate, one line per finished run."""
from __future__ import annotations

import signal
import threading
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nwor import reaper
from nwor.suite import run_suite


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, CI cancellation): stops the suite the way Ctrl-C does."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_with_progress(states, n_todo: int, estimate: float | None, outputs, force: bool, rid, *, out: Console,
                      err: Console, ray_options: dict | None = None) -> bool:
    """Run the suite under a suite bar and a per-run bar (on `err`); True when every run ended done.

    `ray_options`: run_suite's executor arguments for `--executor ray` (None: the local executor).

    Raises:
        typer.Exit: Ctrl-C or SIGTERM (128 + the signal), after saying how many runs remain.
        NworError: what `run_suite` raises (a held lock, an unwritable outputs folder).
    """

    # Rounded: the run bar counts seconds against the estimate, which rich would print as raw floats.
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed:.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    results = {}
    with Progress(*columns, console=err, transient=False) as bar:
        suite_task = bar.add_task("suite", total=n_todo)
        run_task = bar.add_task("", total=estimate or 60)
        started = [time.monotonic()]

        def progress(event, state, index, total):
            if event == "start":
                started[0] = time.monotonic()
                bar.reset(run_task, total=estimate or 60, description=state.spec.run_id)
            else:
                if not ray_options:  # Ray tasks end their own leftovers; the id also marks the other tasks' kernels
                    reaper.reap(rid)  # an engine the run's kernel left behind would hold its memory for the next
                results[state.spec.run_id] = state
                bar.update(run_task, completed=estimate or 60)
                bar.advance(suite_task)
                colour = "green" if state.status == "done" else "red"
                # Ray runs overlap: the time since the last start would be another run's; take the notebook's own.
                took = state.duration_s if ray_options else time.monotonic() - started[0]
                bar.console.print(f"[{colour}]{state.status:>8}[/] {state.spec.grid}/{state.spec.run_id} "
                                  f"({'?' if took is None else f'{took:.0f}'} s)"
                                  + (f": {state.reason}" if state.reason else ""), highlight=False)

        # A shell's background job inherits SIGINT ignored, and Python keeps it so; `kill -INT` must still stop
        # a suite (as SIGTERM does), whoever started it. Ray's driver holds both signals (nwor.interrupts).
        previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            stop = threading.Event()

            def tick():  # the current run's bar advances with time against the estimate
                while not stop.wait(1.0):
                    bar.update(run_task, completed=min(time.monotonic() - started[0], (estimate or 60) * 0.99))

            threading.Thread(target=tick, daemon=True).start()
            signal.signal(signal.SIGTERM, _on_sigterm)
            run_suite([s.spec for s in states], root=outputs, force=force, progress=progress, states=states,
                      **(ray_options or {}))
        except KeyboardInterrupt as interrupt:
            left = n_todo - len(results)
            err.print(f"interrupted: {left} runs remain; run the same command to resume")
            raise typer.Exit(128 + (signal.SIGTERM if isinstance(interrupt, _Terminated) else signal.SIGINT))
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous_sigint is None else previous_sigint)
            stop.set()
    failed = [s for s in results.values() if s.status != "done"]
    out.print(f"{len(results) - len(failed)} runs done, {len(failed)} failed or refused")
    return not failed
