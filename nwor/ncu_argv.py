"""The ncu command line of one profiling pass, built as an argv list (never a shell string)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nwor.errors import ConfigError

REPLAY_MODES = ("app-range", "kernel")
CACHE_CONTROLS = ("all", "none")
CLOCK_CONTROLS = ("none", "base")


def ncu_argv(workload_argv: Sequence[str], *, metrics: Sequence[str], report_path: str | Path,
             log_path: str | Path, replay_mode: str = "app-range", cache_control: str = "all",
             clock_control: str = "none", nvtx_include: str | None = None, ncu: str = "ncu",
             kernel_name: str | None = None, nvtx: bool = False) -> list[str]:
    """Build the ncu argv for one profiling pass.

    Scoping: in app-range replay the workload's cudaProfilerStart/Stop (vLLM's
    ``start_profile``/``stop_profile``) delimit the range by themselves; ncu rejects
    ``--profile-from-start`` in range modes. Kernel replay uses ``--profile-from-start off``
    with the same calls, or an NVTX filter when ``nvtx_include`` is given. Kernel replay costs
    about 0.12 s per kernel on an H100, so the workload must open only a short sub-window.

    Args:
        workload_argv: the command to profile (``python -m nwor.bench ...``).
        metrics: metric names for ``--metrics``.
        report_path: where the report goes; a ``.ncu-rep`` suffix is dropped because ncu adds it.
        log_path: ncu's own log (``--log-file``).
        replay_mode: ``app-range`` (region totals, one pass) or ``kernel`` (per kernel).
        cache_control: ``all`` flushes caches before each kernel/range, ``none`` keeps them warm.
        clock_control: ``none`` keeps the clocks the deployment runs at; ``base`` locks base clocks.
        nvtx_include: an ``--nvtx-include`` expression (``measure/``) scoping the profiled region.
        ncu: the ncu executable.
        kernel_name: a ``--kernel-name`` filter (``regex:reshape_and_cache``): only matching kernels are
            profiled (kernel replay).
        nvtx: record each kernel's NVTX ranges (``--nvtx``) without filtering on them.

    Returns:
        The argv list, ncu first.

    Raises:
        ConfigError: an option value is not one ncu accepts, or no metrics are given.
    """
    for name, value, allowed in (("replay_mode", replay_mode, REPLAY_MODES),
                                 ("cache_control", cache_control, CACHE_CONTROLS),
                                 ("clock_control", clock_control, CLOCK_CONTROLS)):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}", key=name)
    if not metrics:
        raise ConfigError("ncu needs at least one metric", key="metrics")
    report = str(report_path)
    report = report[: -len(".ncu-rep")] if report.endswith(".ncu-rep") else report
    # The vLLM engine core runs the model in a child process: follow every process.
    argv = [str(ncu), "--target-processes", "all", "--replay-mode", replay_mode]
    if nvtx_include is not None:
        argv += ["--nvtx", "--nvtx-include", nvtx_include]
    else:
        argv += ["--nvtx"] if nvtx else []
        argv += ["--profile-from-start", "off"] if replay_mode == "kernel" else []
    if kernel_name is not None:
        argv += ["--kernel-name", kernel_name]
    # Default clock control is none: base clocks would lower throughput below what the
    # deployment sees, and we want the DRAM traffic and time at the clocks it really runs at.
    argv += ["--cache-control", cache_control, "--clock-control", clock_control,
             "--metrics", ",".join(metrics), "--log-file", str(log_path), "-f", "-o", report]
    return argv + [str(part) for part in workload_argv]
