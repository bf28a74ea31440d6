"""The `fork` marker (tests that need a built IluvatarLabs-fork environment run only when one is named) and
the ncu fixtures (tests/fixtures/ncu, large ones stored xz-compressed)."""
from __future__ import annotations

import lzma
import os
import shutil
from pathlib import Path

import pytest

NCU_FIXTURES = Path(__file__).parent / "fixtures" / "ncu"
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


@pytest.fixture(scope="session")
def ncu_fixtures(tmp_path_factory) -> Path:
    """tests/fixtures/ncu with its `.xz` files unpacked: real H100 ncu outputs (see its README)."""
    out = tmp_path_factory.mktemp("ncu")
    for path in NCU_FIXTURES.iterdir():
        if path.suffix == ".xz":
            (out / path.name.removesuffix(".xz")).write_bytes(lzma.decompress(path.read_bytes()))
        else:
            shutil.copy(path, out / path.name)
    return out
