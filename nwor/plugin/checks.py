"""Debug switches for the plugin's own per-step code, reached through `nwor.plugin` RPCs; off by default.

- Sync check: inside nwor's hook code (never inside the vLLM code the hooks call) every host read of a tensor
  raises — `item`, `tolist`, `cpu`, `numpy`, `bool`/`int`/`float`/`index` — and on CUDA
  `torch.cuda.set_sync_debug_mode("error")` is on as well. The tensor-method check works on CPU too, so the
  CPU engine tests prove the same property the GPU run checks.
- Profiler ranges: inside the same regions a `torch.profiler.record_function("nwor::<hook>")` marks the
  plugin's own ops in a torch-profiler trace of the engine process.
When both are off, `region()` returns one shared no-op context: the hooks pay a function call and a test.
"""
from __future__ import annotations

import contextlib

_NULL = contextlib.nullcontext()
# Tensor methods that copy device data to the host (a synchronisation on CUDA). `.to("cpu")` is left out:
# the hooks never call `.to`, and telling a host copy from a dtype cast would need its arguments parsed.
_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostReadInHook(RuntimeError):
    """nwor's per-step code read a tensor on the host while the sync check was on."""


class _State:
    sync_check = False
    profile = False
    inside = 0  # nesting depth of nwor regions in this process
    saved: dict = {}
    cuda = False


STATE = _State()


def _guarded(name, original):
    def method(self, *args, **kwargs):
        if STATE.inside:
            raise HostReadInHook(f"nwor hook called Tensor.{name}() (a host-device synchronisation on CUDA)")
        return original(self, *args, **kwargs)

    method.__name__ = name
    return method


def enable_sync_check(on: bool) -> dict:
    """Switch the sync check on or off in this (engine) process; returns what is active."""
    import torch

    if on and not STATE.sync_check:
        for name in _HOST_READS:
            STATE.saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, _guarded(name, STATE.saved[name]))
    if not on and STATE.sync_check:
        for name, original in STATE.saved.items():
            setattr(torch.Tensor, name, original)
        STATE.saved = {}
    STATE.sync_check = on
    STATE.cuda = on and torch.cuda.is_available()
    return {"sync_check": STATE.sync_check, "cuda_sync_debug_mode": STATE.cuda}


class _Region:
    __slots__ = ("name", "record", "own")

    def __init__(self, name: str, own: bool):
        self.name = name
        self.record = None
        self.own = own

    def __enter__(self):
        import torch

        if STATE.profile:
            self.record = torch.profiler.record_function(self.name)
            self.record.__enter__()
        if STATE.sync_check and self.own:
            STATE.inside += 1
            if STATE.cuda:
                torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc):
        import torch

        if STATE.sync_check and self.own:
            STATE.inside -= 1
            if STATE.cuda and not STATE.inside:
                torch.cuda.set_sync_debug_mode("default")
        if self.record is not None:
            self.record.__exit__(*exc)
        return False


def region(name: str):
    """Context for one stretch of nwor's own hook code (no vLLM calls inside): checked and profiled."""
    if not (STATE.sync_check or STATE.profile):
        return _NULL
    return _Region(name, own=True)


def profiled(name: str):
    """Context around a call that includes vLLM's code: a profiler range only, never sync-checked."""
    if not STATE.profile:
        return _NULL
    return _Region(name, own=False)


_PROFILER: list = []


def profile_start() -> dict:
    """Start torch.profiler (CPU, plus CUDA when present) in this process and the nwor:: ranges."""
    import torch

    if _PROFILER:
        raise RuntimeError("nwor profiler already running")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities, record_shapes=True)
    profiler.start()
    _PROFILER.append(profiler)
    STATE.profile = True
    return {"activities": [str(a) for a in activities]}


def profile_stop(trace_path: str | None) -> dict:
    """Stop the profiler; write a Chrome trace to `trace_path` (when given); summarise the nwor:: ranges.

    Returns:
        `{"ranges": {name: {"count", "cpu_time_total_us", "device_time_total_us"}}, "top_ops": [...],
        "trace_path"}`; `top_ops` are the 25 ops with the largest self device time (self CPU time on CPU).
    """
    if not _PROFILER:
        raise RuntimeError("nwor profiler is not running")
    profiler = _PROFILER.pop()
    STATE.profile = False
    profiler.stop()
    if trace_path:
        profiler.export_chrome_trace(trace_path)
    averages = profiler.key_averages()

    def device_us(event, total: bool) -> float:
        name = ("device_time_total" if total else "self_device_time_total")
        legacy = ("cuda_time_total" if total else "self_cuda_time_total")
        return float(getattr(event, name, getattr(event, legacy, 0.0)) or 0.0)

    ranges = {e.key: {"count": e.count, "cpu_time_total_us": float(e.cpu_time_total),
                      "device_time_total_us": device_us(e, True)}
              for e in averages if e.key.startswith("nwor::")}
    has_device = any(device_us(e, False) > 0 for e in averages)
    ranked = sorted((e for e in averages if not e.key.startswith("nwor::")),
                    key=lambda e: device_us(e, False) if has_device else float(e.self_cpu_time_total),
                    reverse=True)
    top = [{"op": e.key, "count": e.count, "self_cpu_time_total_us": float(e.self_cpu_time_total),
            "self_device_time_total_us": device_us(e, False)} for e in ranked[:25]]
    return {"ranges": ranges, "top_ops": top, "trace_path": trace_path}
