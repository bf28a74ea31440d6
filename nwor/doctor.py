"""`nwor doctor`: what this machine can run, checked one item at a time."""
from __future__ import annotations

import shutil
import sys


def checks() -> list[tuple[str, bool, str]]:
    """(name, ok, detail) for Python, vLLM, the lock, GPU/driver, ncu and counters, and the tiny models."""
    from nwor import provenance

    rows = [("python", sys.version_info >= (3, 10), sys.version.split()[0])]
    try:
        from nwor.features import detect_capability

        cap = detect_capability()
        rows.append(("vllm", True, f"{cap.build}; native features: "
                     f"{', '.join(k for k, v in cap.native.items() if v) or 'none'}; nwor plugin: "
                     f"{'yes' if cap.plugin_supported else 'no (' + str(cap.plugin_reason) + ')'}"))
    except Exception as err:  # doctor reports every failure instead of stopping at the first
        rows.append(("vllm", False, f"{type(err).__name__}: {err}"))
    lock = provenance.lock_state()
    if lock["lock_file"]:  # an installed nwor has no lock to compare with
        rows.append(("lock", True, f"{lock['lock_file']}: " + ("installed versions match" if lock["lock_matches"]
                     else f"differs ({'; '.join(lock['lock_mismatches'][:3])}); expected on a GPU environment")))
    gpus = provenance.gpu_info()
    rows.append(("gpu", True, ", ".join(g["name"] for g in gpus["gpus"]) + f" (driver {gpus['driver']})"
                 if gpus["gpus"] else "none (CPU engine only; ncu runs record 'unavailable')"))
    try:
        from nwor.profile import find_ncu

        path, version = find_ncu()
        rows.append(("ncu", True, f"{version} at {path}"))
        rows.append(("ncu counters", *_counter_permission()))
    except Exception as err:  # NcuNotAvailable, or a broken install
        rows.append(("ncu", gpus["gpus"] == [], f"unavailable: {err}"))
    try:
        from nwor.tiny import ensure_tiny_models

        tiny = ensure_tiny_models()
        rows.append(("tiny models", True, provenance.display_path(tiny.target)))
    except Exception as err:  # transformers/tokenizers missing or a write error
        rows.append(("tiny models", False, f"{type(err).__name__}: {err}"))
    return rows


def _counter_permission() -> tuple[bool, str]:
    """Linux restricts GPU counters to admins unless the driver says otherwise (ERR_NVGPUCTRPERM)."""
    try:
        text = open("/proc/driver/nvidia/params").read()
    except OSError:
        return True, "driver parameters not readable; a profiled run will tell"
    restricted = "RmProfilingAdminOnly: 1" in text
    import os

    if restricted and os.geteuid() != 0:
        return False, "restricted to admins (ERR_NVGPUCTRPERM): run as root or set NVreg_RestrictProfilingToAdminUsers=0"
    return True, "permitted" + (" (as root)" if restricted else "")
