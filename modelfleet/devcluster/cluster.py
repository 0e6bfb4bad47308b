"""Start etcd and kube-apiserver on loopback with RBAC, TLS and a kubeconfig.

This is the envtest approach: the real API server with no controllers, so
tests exercise real admission, validation, RBAC, subresources and watches.
The processes run in their own session so ``make demo`` can leave them up;
their PIDs are kept in the work directory so ``down`` can find them later.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelfleet.core import tls

DEFAULT_CACHE = Path(os.environ.get("MODELFLEET_CACHE", Path.home() / ".cache" / "modelfleet"))
BINARIES = ("etcd", "kube-apiserver", "kubectl")


def find_binaries() -> Path:
    """The directory with etcd, kube-apiserver and kubectl: KUBEBUILDER_ASSETS or the cache."""
    candidates = [Path(p) for p in [os.environ.get("KUBEBUILDER_ASSETS")] if p]
    candidates.append(DEFAULT_CACHE / "bin")
    for directory in candidates:
        if all((directory / name).exists() for name in BINARIES):
            return directory
    raise FileNotFoundError(
        f"etcd, kube-apiserver and kubectl not found in {[str(c) for c in candidates]}; "
        f"run hack/provision.sh (make provision) or set KUBEBUILDER_ASSETS"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalCluster:
    """A running etcd + kube-apiserver rooted at ``workdir``."""

    workdir: Path
    bin_dir: Path
    api_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def start(self, timeout: float = 90.0) -> LocalCluster:
        """Start both processes, write the kubeconfig and wait until /readyz answers ok."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        client_port, peer_port = free_port(), free_port()
        ca = tls.create_ca(self.pki)
        serving = tls.issue(ca, self.pki, "apiserver", "kube-apiserver", ["127.0.0.1", "localhost"])
        admin = tls.issue(ca, self.pki, "admin", "admin", organization="system:masters")
        signing = tls.create_signing_key(self.pki)
        self._spawn(
            "etcd",
            [
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{client_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--insecure-port=0",
                f"--cert-dir={self.pki}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}",
                f"--service-account-key-file={signing.cert}",
                f"--service-account-signing-key-file={signing.key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )
        self._write_kubeconfig(ca.cert, admin)
        self._wait_ready(timeout)
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self.workdir / f"{name}.pid").write_text(str(process.pid))

    def _write_kubeconfig(self, ca_cert: Path, admin: tls.KeyPair) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.server, "certificate-authority": str(ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate": str(admin.cert), "client-key": str(admin.key)},
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        (self.workdir / "cluster.json").write_text(json.dumps({"server": self.server}))

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        context = self._ssl_context()
        last_error = ""
        while time.monotonic() < deadline:
            for name in ("etcd", "kube-apiserver"):
                if not self._alive(name):
                    tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited during start-up:\n{tail}")
            try:
                with urllib.request.urlopen(
                    f"{self.server}/readyz", context=context, timeout=5
                ) as r:
                    if r.status == 200:
                        return
            except OSError as error:
                last_error = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s: {last_error}")

    def _pid(self, name: str) -> int | None:
        path = self.workdir / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        if pid is None:
            return False
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0
        if waited:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, remove: bool = False) -> None:
        """Stop the API server, then etcd; optionally delete the work directory."""
        for name in ("kube-apiserver", "etcd"):
            pid = self._pid(name)
            if pid is None:
                continue
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while self._alive(name) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not self._alive(name):
                    break
            (self.workdir / f"{name}.pid").unlink(missing_ok=True)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        """Run kubectl against this cluster and return its stdout."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, ["kubectl", *args], result.stdout, result.stderr
            )
        return result.stdout if check else result.stdout + result.stderr
