"""nwor/kernel.py: run kernels talk to papermill over IPC, so the TCP warning has no cause (and no line)."""
from __future__ import annotations

from pathlib import Path

import papermill
import pytest

from nwor.kernel import ipc_kernel_manager_class

NOTEBOOK = Path(__file__).parent / "notebooks" / "ok.ipynb"
WARNING = "Kernel is running over TCP without encryption"


def _run(tmp_path, **kwargs) -> None:
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path), **kwargs)


@pytest.mark.parametrize("ipc", [False, True])
def test_ipc_kernels_print_no_tcp_warning_and_leave_no_sockets(tmp_path, capfd, ipc):
    _run(tmp_path, **({"kernel_manager_class": ipc_kernel_manager_class()} if ipc else {}))
    printed = "".join(capfd.readouterr())
    assert (WARNING in printed) is not ipc  # TCP (papermill's default) does print it: the test can fail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]  # no socket files in the run folder


def test_ipc_sockets_live_in_the_temp_folder():
    import tempfile

    manager = ipc_kernel_manager_class()(kernel_name="python3")
    assert manager.transport == "ipc" and manager.ip.startswith(tempfile.gettempdir())
