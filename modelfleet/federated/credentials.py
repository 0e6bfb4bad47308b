"""The TLS and SuperNode-authentication material of one federation.

A federation on a cluster encrypts every connection to its SuperLink and admits only its
own clients: the SuperLink serves a certificate its job's CA signed, and each SuperNode
signs its requests with an EC key whose public half the SuperLink registers before the run
(Flower's CLI-managed SuperNode authentication). The material is minted once per job; the
SuperLink's files go to the SuperLink alone, each client's key to that client alone.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.core import tls

CA_CERT = "ca.crt"
SERVER_CERT = "tls.crt"
SERVER_KEY = "tls.key"
NODE_KEY = "auth.key"
"""A client's private key, in OpenSSH format as ``flower-supernode`` reads it."""
PUBLIC_KEY_SUFFIX = ".pub"
"""A client's public key in the SuperLink's files is ``<client>.pub`` (OpenSSH format)."""


@dataclass(frozen=True)
class FederationCredentials:
    """File name to content: the SuperLink's, and each client's."""

    superlink: dict[str, bytes]
    clients: dict[str, dict[str, bytes]]


def _node_keys() -> tuple[bytes, bytes]:
    """A P-384 key pair (the curve Flower's docs use), private and public, OpenSSH-encoded."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def mint_credentials(hosts: Sequence[str], clients: Sequence[str]) -> FederationCredentials:
    """A fresh CA, a SuperLink certificate for ``hosts`` and a key pair per client. The CA's
    key is discarded: nothing else is ever signed for this federation."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ca = tls.create_ca(directory, "modelfleet-federation-ca")
        server = tls.issue(ca, directory, "superlink", "superlink", hosts=list(hosts))
        ca_cert = ca.cert.read_bytes()
        superlink = {
            CA_CERT: ca_cert,
            SERVER_CERT: server.cert.read_bytes(),
            SERVER_KEY: server.key.read_bytes(),
        }
    nodes: dict[str, dict[str, bytes]] = {}
    for client in clients:
        private, public = _node_keys()
        superlink[f"{client}{PUBLIC_KEY_SUFFIX}"] = public
        nodes[client] = {CA_CERT: ca_cert, NODE_KEY: private}
    return FederationCredentials(superlink, nodes)


def write_credentials(directory: Path, files: Mapping[str, bytes]) -> Path:
    """``files`` under ``directory`` (created 0700), keys readable by the owner only."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(0o600)
    return directory


def public_keys(directory: Path) -> dict[str, Path]:
    """The clients' public keys among a SuperLink's files, by client name."""
    return {
        path.name.removesuffix(PUBLIC_KEY_SUFFIX): path
        for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}"))
    }
