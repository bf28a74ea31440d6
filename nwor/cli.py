"""The `nwor` command line: parse arguments, call one function, show the result."""
from __future__ import annotations

import re
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from nwor._version import __version__
from nwor.errors import ConfigError, NworError

# Plain help (rich_markup_mode=None): typer's rich help labels every flag `<bool>`, `--help` included.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Run, profile and analyse speculative-decoding experiments on vLLM.")
ncu_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="Nsight Compute reports.")
app.add_typer(ncu_app, name="ncu")
# Piped output (CI logs, notebooks) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 180)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 180)

GridsArg = typer.Argument(None, help="adaptive_grid, early_exit_grid, oneoff_scenarios, or all (default)")
ProfileOpt = typer.Option("smoke", "--profile", "-p", help="full | smoke | gpu-smoke (parameters/profiles.yaml)")
OutputsOpt = typer.Option(None, "--outputs", help="outputs folder (default: $NWOR_OUTPUTS, else the project's "
                          "outputs/)")
# The same overrides for plan, status and run: a result made with them must not show as stale.
TargetOpt = typer.Option(None, "--target-model", help="override the profile's target model")
DraftOpt = typer.Option(None, "--draft-model", help="override the profile's draft model")
TensorParallelOpt = typer.Option(None, "--tensor-parallel-size", help="override tensor parallel size")
FeatureImplOpt = typer.Option(None, "--feature-impl", help="auto | native | plugin")


def _version(value: bool) -> None:
    if value:
        out.print(f"nwor {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                          help="print nwor's version and exit")):
    """Run, profile and analyse speculative-decoding experiments on vLLM."""


def _specs(grids, profile, only=None, target_model=None, draft_model=None, tensor_parallel_size=None,
           feature_impl=None, outputs=None):
    """The runs asked for, in order (a grid named twice runs once); their outputs folders checked."""
    from nwor.execute import run_dir
    from nwor.files import check_folders
    from nwor.grid import expand_all

    overrides = {k: v for k, v in dict(target_model=target_model, draft_model=draft_model,
                                       tensor_parallel_size=tensor_parallel_size,
                                       feature_impl=feature_impl).items() if v is not None}
    specs = expand_all(list(dict.fromkeys(grids or ["all"])), profile, overrides=overrides)
    check_folders(dict.fromkeys(run_dir(s.profile, s.grid, outputs) for s in specs))
    if only:
        known = {s.run_id for s in specs}
        unknown = [r for r in only if r not in known]
        if unknown:
            raise ConfigError(f"unknown run id {unknown[0]!r} in profile {profile} (see `nwor plan`)")
        specs = [s for s in specs if s.run_id in only]
    return specs


def _fmt_s(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _state_table(states, estimate) -> Table:
    table = Table(show_lines=False)
    table.add_column("grid", no_wrap=True)
    table.add_column("run id", no_wrap=True)
    for col in ( "requests", "tokens", "temp", "draft", "adaptive", "threshold", "ncu", "status",
                "time"):
        table.add_column(col)
    colour = {"done": "green", "failed": "red", "refused": "red", "corrupt": "red", "stale": "yellow",
              "pending": "white"}
    for st in states:
        s = st.spec
        table.add_row(s.grid, s.run_id, str(s.num_requests), str(s.max_new_tokens), str(s.temperature),
                      str(s.num_speculative_tokens), "on" if s.adaptive_draft_length else "off",
                      str(s.confidence_threshold), "on" if s.ncu else "off",
                      f"[{colour[st.status]}]{st.status}[/]" + (f" ({st.reason})" if st.reason else ""),
                      _fmt_s(st.duration_s if st.status == "done" else estimate))
    return table


def _one_line(text) -> str:
    """A multi-line message (a traceback's last lines, a YAML excerpt) as one line: ` | ` between lines."""
    return re.sub(r"\s*\n\s*", " | ", str(text).strip())


def _say_error(error) -> None:
    """One line on stderr, however long (rich would wrap it at the console width)."""
    err.print(f"nwor: error: {_one_line(error)}", markup=False, highlight=False, soft_wrap=True)


def _fail(error: NworError) -> None:
    _say_error(error)
    raise typer.Exit(2)


@app.command()
def plan(grids: Optional[List[str]] = GridsArg, profile: str = ProfileOpt, outputs: Optional[str] = OutputsOpt,
         target_model: Optional[str] = TargetOpt, draft_model: Optional[str] = DraftOpt,
         tensor_parallel_size: Optional[int] = TensorParallelOpt, feature_impl: Optional[str] = FeatureImplOpt):
    """Table of runs with their parameters, status and estimated time."""
    from nwor.grid import load_profile
    from nwor.suite import estimate_s, run_state

    try:
        specs = _specs(grids, profile, None, target_model, draft_model, tensor_parallel_size, feature_impl, outputs)
        states = [run_state(s, outputs) for s in specs]
        estimate = estimate_s(states, load_profile(profile).estimate_s_per_run)
    except NworError as e:
        _fail(e)
    out.print(_state_table(states, estimate))
    remaining = [s for s in states if s.status != "done"]
    total = None if estimate is None else estimate * len(remaining)
    out.print(f"{len(states)} runs: {len(states) - len(remaining)} done, {len(remaining)} to run "
              f"(estimated {_fmt_s(total)})")


@app.command()
def status(profile: str = ProfileOpt, outputs: Optional[str] = OutputsOpt, target_model: Optional[str] = TargetOpt,
           draft_model: Optional[str] = DraftOpt, tensor_parallel_size: Optional[int] = TensorParallelOpt,
           feature_impl: Optional[str] = FeatureImplOpt):
    """Counts of done / failed / refused / corrupt / stale / pending runs for a profile."""
    from collections import Counter

    from nwor.suite import run_state

    try:
        specs = _specs(None, profile, None, target_model, draft_model, tensor_parallel_size, feature_impl, outputs)
        states = [run_state(s, outputs) for s in specs]
    except NworError as e:
        _fail(e)
    counts = Counter(st.status for st in states)
    out.print(f"profile {profile}: " + ", ".join(f"{counts[k]} {k}" for k in
                                                  ("done", "failed", "refused", "corrupt", "stale", "pending")
                                                  if counts[k]))
    for st in states:
        if st.status in ("failed", "refused", "corrupt"):
            out.print(f"  {st.status}: {st.spec.grid}/{st.spec.run_id}: {st.reason}", markup=False)


@app.command()
def run(grids: Optional[List[str]] = GridsArg, profile: str = ProfileOpt,
        only: Optional[List[str]] = typer.Option(None, "--only", help="run only these run ids (repeatable)"),
        force: bool = typer.Option(False, "--force", help="rerun runs that are already done"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and run nothing"),
        target_model: Optional[str] = TargetOpt, draft_model: Optional[str] = DraftOpt,
        tensor_parallel_size: Optional[int] = TensorParallelOpt, feature_impl: Optional[str] = FeatureImplOpt,
        outputs: Optional[str] = OutputsOpt,
        executor: str = typer.Option("local", "--executor", help="local (one run at a time, here) | ray (runs as "
                                     "Ray tasks, in parallel; docs/scale_out.md)"),
        address: Optional[str] = typer.Option(None, "--address", help="with --executor ray: the Ray cluster to "
                                              "use (default: start a local one)"),
        local_cpus: Optional[int] = typer.Option(None, "--local-cpus", help="with --executor ray and no --address: "
                                                 "CPUs of the local cluster (default: all); CPU runs take one each")):
    """Execute each pending run in a fresh kernel (papermill); resumable, one runner per outputs folder."""
    from nwor.engine import check_engine_settings
    from nwor.grid import load_profile
    from nwor.suite import estimate_s, run_state

    try:
        ray_options = _ray_options(executor, address, local_cpus)
        specs = _specs(grids, profile, only, target_model, draft_model, tensor_parallel_size, feature_impl, outputs)
        states = [run_state(s, outputs) for s in specs]
        estimate = estimate_s(states, load_profile(profile).estimate_s_per_run)
        todo = [s for s in states if force or s.status != "done"]
        if not dry_run:
            check_engine_settings([s.spec for s in todo])  # before any kernel starts
    except NworError as e:
        _fail(e)
    if dry_run:
        out.print(_state_table(states, estimate))
        out.print(f"dry run: {len(todo)} of {len(states)} runs would execute")
        return
    if not todo:
        out.print(f"nothing to do: all {len(states)} runs are done with the same parameters")
        return
    if len(todo) < len(states):
        out.print(f"resuming: {len(states) - len(todo)} runs done, {len(todo)} remain")
    if any(s.spec.ncu for s in todo):
        from nwor.errors import NcuNotAvailable
        from nwor.profile import find_ncu

        try:
            find_ncu()
        except NcuNotAvailable as e:  # said once per suite; each run records it in its JSON
            out.print(f"[yellow]Nsight Compute unavailable here ({e}); ncu runs record 'unavailable'.[/]")
    from nwor import reaper
    from nwor.execute import run_dir
    from nwor.files import check_writable, describe_os_error

    try:
        for folder in dict.fromkeys(run_dir(s.spec.profile, s.spec.grid, outputs).parent for s in todo):
            check_writable(folder)  # a read-only or full outputs folder: one line, before any progress bar
    except OSError as e:
        _fail(ConfigError(describe_os_error(e)))
    ended = reaper.reap_orphans()
    if ended:
        out.print(f"ended {ended} processes (vLLM engines, kernels) left behind by a killed nwor run")
    rid = reaper.mark_runner()
    from nwor.progress import run_with_progress

    try:
        ok = run_with_progress(states, len(todo), estimate, outputs, force, rid, out=out, err=err,
                               ray_options=ray_options)
    except NworError as e:
        _fail(e)
    finally:
        reaper.reap(rid)  # nothing this runner started outlives it, however it ends
    raise typer.Exit(0 if ok else 1)


def _ray_options(executor: str, address: str | None, local_cpus: int | None) -> dict | None:
    """run_suite's executor arguments, or None for the local executor; bad combinations are a ConfigError."""
    from nwor.ray_suite import EXECUTORS

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor == "local":
        if address or local_cpus is not None:
            raise ConfigError("--address and --local-cpus need --executor ray")
        return None
    if address and local_cpus is not None:
        raise ConfigError("--local-cpus sizes a local Ray cluster; a cluster at --address has its own")
    if local_cpus is not None and local_cpus < 1:
        raise ConfigError(f"--local-cpus {local_cpus}: needs at least 1")
    return {"executor": "ray", "ray_address": address, "ray_local_cpus": local_cpus}


@app.command()
def report(profile: str = ProfileOpt, outputs: Optional[str] = OutputsOpt):
    """Execute the analysis notebook for a profile; writes HTML, PNG and SVG under outputs/<profile>/report/."""
    from nwor.report import render_report

    try:
        html = render_report(profile, outputs)
    except NworError as e:
        _fail(e)
    out.print(f"report: {html}")


@app.command()
def doctor():
    """Python, vLLM build, GPU/driver, ncu and counter permission, and whether the tiny models build."""
    from nwor.doctor import checks

    failed = 0
    for name, ok, detail in checks():
        failed += not ok
        out.print(f"{'[green]ok[/]' if ok else '[red]FAIL[/]':>4} {name}: {detail}", highlight=False)
    raise typer.Exit(1 if failed else 0)


@ncu_app.command("summarize")
def ncu_summarize(path: str = typer.Argument(..., help="a .ncu-rep report or an ncu --csv --page raw export")):
    """Per-metric totals (base units) and the top kernels of an Nsight Compute report."""
    from nwor.ncu_read import summarize

    try:
        out.print(summarize(path), markup=False, highlight=False)
    except NworError as e:
        _fail(e)
    except UnicodeDecodeError as e:
        _fail(ConfigError(f"{path}: not an ncu CSV export (not UTF-8 text: byte {e.start} is {e.object[e.start]:#04x})"))


def main() -> None:
    from nwor.files import describe_os_error

    try:
        app()
    except NworError as e:  # anything that escaped a command: still one line and exit 2
        _say_error(e)
        sys.exit(2)
    except OSError as e:  # a read-only or full outputs folder, a file where a folder should be
        _say_error(describe_os_error(e))
        sys.exit(2)


if __name__ == "__main__":
    main()
