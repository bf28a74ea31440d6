"""The kernel manager papermill starts run and report kernels with: local IPC sockets, not TCP.

The kernel and papermill always share one machine. Over TCP every kernel printed ipykernel's "Kernel is
running over TCP without encryption" warning into the terminal once per run; IPC (Unix sockets in the
temp folder) keeps the kernel's channels off the network, so the warning's reason is gone, not silenced.
"""
from __future__ import annotations

import os
import tempfile
import uuid


def ipc_kernel_manager_class():
    """An `AsyncKernelManager` (nbclient's default) whose transport is IPC, for papermill's
    `kernel_manager_class`."""
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class IpcKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            # The socket files' prefix (`<ip>-<port>`): the temp folder, not the working directory, which
            # would collect the sockets of a killed run; jupyter_client removes them at shutdown.
            return os.path.join(tempfile.gettempdir(), f"nwor-kernel-{uuid.uuid4().hex[:12]}")

    return IpcKernelManager
