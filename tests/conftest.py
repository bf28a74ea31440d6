"""The `fork` marker: tests that need a built IluvatarLabs-fork environment run only when one is named."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FORK_PYTHON_ENV = "NWOR_FORK_PYTHON"  # the fork environment's python (shared/fork-cpu/build.sh builds one)


def fork_python() -> str | None:
    """`$NWOR_FORK_PYTHON` when it names an executable file, else None."""
    path = os.environ.get(FORK_PYTHON_ENV)
    return path if path and Path(path).is_file() and os.access(path, os.X_OK) else None


def pytest_collection_modifyitems(config, items):
    if fork_python():
        return
    named = os.environ.get(FORK_PYTHON_ENV)
    reason = (f"{FORK_PYTHON_ENV}={named} is not an executable file" if named else
              f"needs the IluvatarLabs fork: set {FORK_PYTHON_ENV} to a fork environment's python "
              "(shared/fork-cpu/build.sh)")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("fork") is not None:  # not item.keywords: a folder named "fork" matches
            item.add_marker(skip)
