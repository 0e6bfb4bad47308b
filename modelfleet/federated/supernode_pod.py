"""The SuperNode pod of a FedJob on a cluster: ``flower-supernode``, started again whenever
it exits.

The SuperLink registers its clients' public keys through its Control API just after it
starts listening, and a SuperNode that asks to join before its key is registered is
refused and exits. The pods start in any order, so the first attempt often comes too
early; starting again after a short pause here (rather than through the kubelet's
growing crash back-off) has every client in the federation seconds after its SuperLink.
``python -m modelfleet.federated.supernode_pod flower-supernode ARGS...`` is the container's
command; SIGTERM, when the pod is stopped, ends the SuperNode and this loop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

RETRY_SECONDS = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the SuperNode command in ``argv`` until this process is told to stop."""
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m modelfleet.federated.supernode_pod COMMAND [ARG...]")
        return 2
    executable = Path(sys.prefix) / "bin" / command[0]
    if executable.exists():
        command[0] = str(executable)
    stopping = False
    node: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if node is not None and node.poll() is None:
            node.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        node = subprocess.Popen(command)
        code = node.wait()
        if stopping:
            break
        print(
            f"{command[0]} exited with {code}; starting it again in {RETRY_SECONDS:.0f}s",
            flush=True,
        )
        time.sleep(RETRY_SECONDS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
