"""Executing a run's notebook with papermill in a fresh kernel (its paths come from nwor.paths)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nwor.config import SPEC_FIELDS, RunSpec
from nwor.engine import PROCESS_ENDS_ENV, logging_config_path
from nwor.errors import ConfigError, RunFailed, is_refusal
from nwor.files import use_atomic_notebook_writes
from nwor.kernel import ipc_kernel_manager_class
from nwor.paths import OUTPUTS_ENV, PACKAGE_ROOT, RunPaths, outputs_root, run_dir  # noqa: F401  (re-exported)
from nwor.results import failure, read_result, write_result

RUN_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "run_experiment.ipynb"
SERVE_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "serve_experiment.ipynb"  # runs with serve_max_concurrency set
REPORT_NOTEBOOK = PACKAGE_ROOT / "notebooks" / "report.ipynb"
# Parameters the run notebook takes besides the RunSpec fields.
PATH_PARAMETERS = ("result_path", "log_path")


def run_paths(spec: RunSpec, result_path: str = "", log_path: str = "", root=None) -> tuple[str, str]:
    """The result JSON and vLLM log paths of a run; empty arguments get the defaults under run_dir()."""
    paths = RunPaths.of(spec.profile, spec.grid, spec.run_id, root)
    result = Path(result_path) if result_path else paths.result
    log = Path(log_path) if log_path else RunPaths(result.parent, spec.run_id).vllm_log
    return relative_path(result), relative_path(log)


def relative_path(path: Path) -> str:
    """Relative to the working directory where possible: executed notebooks then name no machine paths."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _environment(values: dict):
    """These variables set in this process's environment (a kernel started meanwhile inherits them), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def notebook_path(result_path: str | Path) -> Path:
    return RunPaths.from_result(result_path).notebook


def check_parameters(notebook: Path, names) -> None:
    """Raise unless the notebook's `parameters` cell declares every name we will pass.

    Raises:
        ConfigError: a name is not declared (papermill would inject it silently).
    """
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    missing = sorted(set(names) - declared)
    if missing:
        raise ConfigError(f"{notebook.name}: parameters cell does not declare {', '.join(missing)}",
                          notebook=str(notebook))


def run_notebook(spec: RunSpec, *, root=None, notebook: Path | None = None) -> dict:
    """Execute the run notebook for `spec` in a fresh kernel; return the run's result document.

    The executed notebook is always kept next to the JSON. On failure a result with status "failed"
    (cell, exception, notebook path) is written instead, so nothing mistakes the run for finished.

    Raises:
        RunFailed: the notebook raised; the failure record is already written.
    """
    import papermill

    notebook = notebook or (SERVE_NOTEBOOK if spec.serving else RUN_NOTEBOOK)
    result_path, log_path = run_paths(spec, root=root)
    executed = notebook_path(result_path)
    executed.parent.mkdir(parents=True, exist_ok=True)
    # A rerun starts clean: a run killed midway then leaves no JSON, never an older one beside a new notebook,
    # and its vLLM log holds this attempt only.
    Path(result_path).unlink(missing_ok=True)
    Path(log_path).unlink(missing_ok=True)
    use_atomic_notebook_writes()  # papermill rewrites the notebook after each cell: a full disk must not tear it
    check_parameters(notebook, (*SPEC_FIELDS, *PATH_PARAMETERS))
    parameters = {**spec.to_dict(), "result_path": result_path, "log_path": log_path}
    # An in-process engine dies with its kernel: a graceful kernel exit would only wait out vLLM's and torch's
    # atexit hooks (~3.5 s a smoke run), and measure() need not shut its last engine down (the kernel
    # inherits PROCESS_ENDS_ENV; nwor.engine.keep_until_exit).
    immediate = spec.engine_in_process
    try:
        # Relative paths: papermill records them in the executed notebook, which gets shared.
        with _environment({PROCESS_ENDS_ENV: "1"} if immediate else {}):
            papermill.execute_notebook(relative_path(notebook), relative_path(executed), parameters=parameters,
                                       kernel_name="python3", kernel_manager_class=ipc_kernel_manager_class(),
                                       shutdown_kernel="immediate" if immediate else "graceful",
                                       progress_bar=False, log_output=False, cwd=str(Path.cwd()))
    except papermill.PapermillExecutionError as err:
        message = f"{err.ename}: {err.evalue}".strip()
        status = "refused" if is_refusal(err.ename) else "failed"
        # exec_count: the failing cell's execution count (papermill's), not its position in the notebook.
        write_result(result_path, failure(spec, RunFailed(message), status=status, notebook=str(executed),
                                          exec_count=err.exec_count, exception=err.ename))
        raise RunFailed(f"run {spec.run_id} {status}: {message} (see {executed})", run_id=spec.run_id,
                        notebook=str(executed), exec_count=err.exec_count, exception=err.ename) from None
    except Exception as err:  # the kernel died or could not start: no PapermillExecutionError to read
        write_result(result_path, failure(spec, err, notebook=str(executed)))
        raise RunFailed(f"run {spec.run_id} failed: {type(err).__name__}: {err} (see {executed})",
                        run_id=spec.run_id, notebook=str(executed)) from None
    finally:
        # An immediate kernel shutdown skips the kernel's atexit hooks, so the runner removes the logging
        # configuration a last engine start may have left beside the log.
        logging_config_path(log_path).unlink(missing_ok=True)
    if not Path(result_path).exists():
        write_result(result_path, failure(spec, "notebook finished without writing its result",
                                          notebook=str(executed)))
        raise RunFailed(f"run {spec.run_id}: notebook wrote no result (see {executed})", run_id=spec.run_id,
                        notebook=str(executed))
    return read_result(result_path)
