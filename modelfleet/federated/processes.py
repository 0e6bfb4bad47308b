"""Start Flower's processes and make sure none outlives its federation.

SuperLinks and SuperNodes spawn SuperExec, ServerApp and ClientApp processes, some in
sessions of their own, so killing the processes we started is not enough. Every process
of one federation inherits a marker in its environment; stopping the federation ends the
started processes and then every process still carrying the marker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, suppress
from pathlib import Path

MARKER_VARIABLE = "MODELFLEET_FEDERATION"
"""Environment variable whose value tags every process of one local federation."""

RESERVED_PORTS = frozenset({8000, 9091, 9092, 9093, 9094, 9095})
"""Ray Serve's HTTP port and Flower's defaults, never handed out even when free now."""

STOP_GRACE_SECONDS = 5.0


def pick_free_ports(count: int, reserved: frozenset[int] = RESERVED_PORTS) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago, none in ``reserved``.

    All sockets stay bound until every port is chosen, so the kernel cannot hand one
    port out twice; another process may still take one before Flower binds it."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            candidate = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            candidate.bind(("127.0.0.1", 0))
            if candidate.getsockname()[1] in reserved:
                candidate.close()
                continue
            sockets.append(candidate)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once something accepts connections on loopback ``port``; fail if ``process``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening"
            )
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


def read_environment(pid: int) -> dict[str, str]:
    """The environment of process ``pid``; empty when it is gone or not ours to read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def find_marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker``, this process excluded."""
    own = os.getpid()
    return [
        pid
        for pid in _list_pids()
        if pid != own and read_environment(pid).get(MARKER_VARIABLE) == marker
    ]


def _list_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def stop_processes(started: Sequence[subprocess.Popen[bytes]], marker: str) -> None:
    """Terminate ``started``, give them a grace period to stop their children, then kill
    whatever still carries ``marker`` until nothing does; a process can be mid-spawn or
    mid-exit when first seen, so one sweep is not enough."""
    for process in started:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in started:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _kill_marked(marker, time.monotonic() + STOP_GRACE_SECONDS)


def _kill_marked(marker: str, deadline: float) -> None:
    """SIGKILL every process carrying ``marker`` until none is left or ``deadline`` passes."""
    while survivors := find_marked_processes(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {survivors} of federation {marker} would not die")
        for pid in survivors:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
