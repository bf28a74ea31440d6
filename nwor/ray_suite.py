"""Executing a suite's pending runs as Ray tasks, one fresh papermill kernel each, spread over a cluster's GPUs.

The driver (`nwor run --executor ray`) keeps everything a local suite does: the one lock, resume, the logs,
refusals and failure records. Each run is a task reserving its GPUs (`tensor_parallel_size`; an ncu run the
whole node, see docs/scale_out.md) that executes `run_notebook` into a private temporary folder on its worker
and returns the run's files; the driver publishes them atomically (nwor.bundle). No shared disk is needed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from nwor.bundle import BundleTooLarge, collect, publish, result_name, with_result_field
from nwor.config import RunSpec
from nwor.errors import ConfigError, FeatureUnavailable, NworError, RunFailed
from nwor.execute import run_dir, run_notebook
from nwor.interrupts import HeldSignals
from nwor.provenance import machine_identity
from nwor.results import failure, write_result

EXECUTORS = ("local", "ray")
# Every process a task starts (kernel, engine core, workers) carries the task's id, so that the worker ends
# whatever outlives the run (an engine left behind would hold its GPU for the next task on that worker).
TASK_ENV = "NWOR_RAY_TASK_ID"
# What Ray changes in its workers' environment and a local run does not have: OMP_NUM_THREADS, set to the task's
# num_cpus (1) when the driver has none. Each task gets the driver's values back, or parallel runs would measure
# another engine than serial ones (H100 session 7: serial runs unset, Ray runs 1).
DRIVER_ENV = ("OMP_NUM_THREADS",)
# Seconds Ctrl-C gives running tasks to end their kernels and clean up before they are killed.
CANCEL_GRACE_S = 5.0
# Seconds one ray.wait blocks before the driver looks at the signals it noted.
WAIT_S = 0.5


def task_resources(spec: RunSpec, node_gpus: int) -> dict:
    """Ray resources for one run: `num_gpus = tensor_parallel_size` on a GPU cluster, all of a node's GPUs for
    an ncu run (ncu's clock locking and node-wide lock must not touch timed runs), one CPU on a CPU cluster.

    `node_gpus` is the largest GPU count of any node (0: a CPU cluster).

    Raises:
        ConfigError: the run needs more GPUs than any node has (its task would wait forever).
    """
    if node_gpus <= 0:
        return {"num_cpus": 1, "num_gpus": 0}
    if spec.tensor_parallel_size > node_gpus:
        raise ConfigError(f"run {spec.run_id}: tensor_parallel_size {spec.tensor_parallel_size} needs more GPUs "
                          f"than any node of the Ray cluster has ({node_gpus})", run_id=spec.run_id)
    return {"num_cpus": 1, "num_gpus": node_gpus if spec.ncu else spec.tensor_parallel_size}


def expected_work(spec: RunSpec) -> int:
    """The tokens a run generates at least: arms x engines x (measured + warm-up batches) x requests x new tokens."""
    return ((1 + len(spec.arms)) * spec.engine_instances * (spec.measured_batches + spec.warmup_batches)
            * spec.num_requests * spec.max_new_tokens)


def submission_order(todo: list) -> list:
    """The pending runs in the order their tasks are submitted: ncu runs (a whole node each) first, then the
    most expected work first, ties in the suite's order. Ray hands each freed GPU to the next task, so a long
    run submitted last would run alone at the end: on the H100 (session 7) two runs that measured two arms
    were submitted last and ran one after the other on one GPU, 36 s after the other three GPUs had finished."""
    return sorted(todo, key=lambda st: (not st.spec.ncu, -expected_work(st.spec)))


def placement() -> dict:
    """Where this task ran: the machine (its hashed id, never a host name: results are shared), Ray node, the GPU
    ids Ray gave it and CUDA_VISIBLE_DEVICES as the run saw it."""
    import ray

    ctx = ray.get_runtime_context()
    return {"executor": "ray", "machine_id": machine_identity()["machine_id"], "node_id": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "resources": ctx.get_assigned_resources()}


def _end_task_processes(task_id: str) -> None:
    import psutil

    from nwor.reaper import end_processes

    procs = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(TASK_ENV) == task_id:
                procs.append(proc)
        except psutil.Error:  # gone, a zombie, or not ours
            continue
    end_processes(procs)


def driver_env(environ=os.environ) -> dict[str, str | None]:
    """The driver's values of DRIVER_ENV (None: unset), for its tasks to run with."""
    return {name: environ.get(name) for name in DRIVER_ENV}


def _set_env(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (None: unset) the variables of `values` in this process; their previous values."""
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def execute_on_worker(spec: RunSpec, env: dict[str, str | None] | None = None) -> dict[str, bytes]:
    """The body of a run's Ray task: run the notebook in a private folder, return the run's files.

    `env` (from `driver_env`) replaces what Ray set in the worker, for the run's kernel and engine.

    The working directory is the private folder while the run executes, so the executed notebook records
    `outputs/<profile>/<grid>/...` paths, never the worker's temporary ones. A failed run returns its failure
    record and notebook, as a local run leaves them.

    Raises:
        NworError: the run could not even record a failure (e.g. the notebook lacks a parameter).
    """
    task_id = uuid.uuid4().hex
    private = Path(tempfile.mkdtemp(prefix="nwor-ray-"))
    before = os.getcwd()
    os.environ[TASK_ENV] = task_id
    ray_env = _set_env(env or {})
    try:
        os.chdir(private)
        root = private / "outputs"
        try:
            run_notebook(spec, root=root)
        except RunFailed:
            pass  # run_notebook wrote the failure record and kept the notebook: both travel like a result
        folder = run_dir(spec.profile, spec.grid, root)
        try:
            files = collect(folder, spec.run_id)
        except BundleTooLarge as err:  # the measurement cannot travel: record why instead
            doc = failure(spec, err)
            write_result(folder / result_name(spec.run_id), doc)
            files = {result_name(spec.run_id): (folder / result_name(spec.run_id)).read_bytes()}
        return with_result_field(files, spec.run_id, "placement", placement())
    finally:
        os.chdir(before)
        os.environ.pop(TASK_ENV, None)
        _set_env(ray_env)  # the worker process is reused by the next task
        _end_task_processes(task_id)
        shutil.rmtree(private, ignore_errors=True)


def start_ray(address: str | None, local_cpus: int | None):
    """Connect to the cluster at `address`, or start a local one (`local_cpus` CPUs, default all; GPUs found).

    Raises:
        ConfigError: Ray is not installed (the `nwor[ray]` extra) or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'nwor[ray]'") from None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"cannot start or reach the Ray cluster{' at ' + address if address else ''}: "
                          f"{type(err).__name__}: {err}") from None
    return ray


def _node_gpus(ray) -> int:
    return int(max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0))


def run_on_ray(todo, refused: dict[str, str], log, root, progress, *, address: str | None = None,
               local_cpus: int | None = None) -> list:
    """Submit every pending run as a task, publish each run's files as its task returns; the suite's states.

    Called by `nwor.suite.run_suite` holding the outputs lock. Ctrl-C or SIGTERM, from the moment Ray starts,
    cancels the tasks (they end their kernels), logs each as CANCELLED, publishes nothing of them and raises
    what the caller's handler for that signal raises (KeyboardInterrupt when it has none).

    Raises:
        ConfigError: Ray is missing or the cluster unreachable.
        OutputsUnwritable: the outputs folder stopped taking writes.
    """
    from nwor.suite import run_state

    ray, finished, pending = None, [], {}
    todo, total = submission_order(todo), len(todo)
    try:
        with HeldSignals() as signals:
            ray = start_ray(address, local_cpus)
            signals.install()  # ray.init put its own SIGTERM handler (sys.exit) in the driver: take it back
            signals.check()
            node_gpus = _node_gpus(ray)
            task, env = ray.remote(execute_on_worker), driver_env()
            for i, st in enumerate(todo):
                spec = st.spec
                if progress:
                    progress("start", st, i, total)
                try:
                    resources = task_resources(spec, node_gpus)
                except ConfigError as err:
                    refused = {**refused, spec.run_id: str(err)}
                if spec.run_id in refused:
                    write_result(st.result_path, failure(spec, FeatureUnavailable(refused[spec.run_id]),
                                                         status="refused"))
                    log.write(spec, "ERROR", f"refused: {refused[spec.run_id]}")
                    finished.append(run_state(spec, root))
                    if progress:
                        progress("end", finished[-1], i, total)
                    continue
                Path(st.result_path).unlink(missing_ok=True)  # as a local rerun: no old JSON beside the new attempt
                log.write(spec, "START", f"ray task ({', '.join(f'{k}={v}' for k, v in resources.items())})")
                ref = task.options(**resources, max_retries=0, name=f"nwor {spec.run_id}").remote(spec, env)
                pending[ref] = (st, i, time.monotonic())
                signals.check()
            while pending:
                # Bounded waits: the signals noted meanwhile are acted on here, between two runs' publications.
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                signals.check()
                if not ready:
                    continue
                st, i, started = pending.pop(ready[0])
                finished.append(_record(ray, ready[0], st, started, log, root, left=len(pending)))
                if progress:
                    progress("end", finished[-1], i, total)
    except BaseException:
        if ray is not None:
            _cancel(ray, pending, log)
        raise
    finally:
        if ray is not None:
            ray.shutdown()  # a local cluster ends; a remote one is only disconnected from
    return finished


def _record(ray, ref, st, started: float, log, root, *, left: int):
    """Publish the files of the run whose task `ref` returned (or its failure record), log it; its state.

    Raises:
        OutputsUnwritable: the outputs folder stopped taking writes (`left` runs were still out).
    """
    from nwor.suite import _log_early_exit, _stopped, run_state

    spec, folder = st.spec, run_dir(st.spec.profile, st.spec.grid, root)
    try:
        try:
            files = ray.get(ref)
        except ray.exceptions.RayError as err:  # the task raised or its worker died: a failure record
            cause = getattr(err, "cause", None) or err
            write_result(st.result_path, failure(spec, f"ray task failed: {type(cause).__name__}: {cause}"))
            log.write(spec, "ERROR", f"ray task failed: {type(cause).__name__}: {cause}")
        else:
            publish(files, folder, spec.run_id)
            state = run_state(spec, root)
            if state.status == "done":
                log.write(spec, "COMPLETE", f"{time.monotonic() - started:.1f}s")
                _log_early_exit(log, spec, st.result_path)
            else:
                log.write(spec, "ERROR", state.reason or state.status)
    except OSError as err:
        raise _stopped(err, spec, root, left) from None
    return run_state(spec, root)


def _cancel(ray, pending: dict, log) -> None:
    """Cancel the tasks still out (KeyboardInterrupt in each, then a kill); none of their files is published."""
    if not pending:
        return
    for ref in pending:
        ray.cancel(ref, force=False)
    _, running = ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
    # Only the tasks still running: force-cancelling one that has just returned races Ray's bookkeeping of its
    # reply, whose RAY_CHECK ("Tried to complete task that was not pending") ends the driver with exit 1.
    for ref in running:
        try:
            ray.cancel(ref, force=True)
        except (ValueError, ray.exceptions.RayError):
            pass  # ended meanwhile: nothing left to kill
    for st, _, _ in pending.values():
        log.write(st.spec, "CANCELLED", "interrupted before its task returned; none of its files was written")
