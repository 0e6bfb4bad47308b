"""The TLS and SuperNode-authentication material of one federation.

A federation on a cluster encrypts every connection to its SuperLink and admits only its
own clients: the SuperLink serves a certificate its job's CA signed, and each SuperNode
signs its requests with an EC key whose public half the SuperLink registers before the run
(Flower's CLI-managed SuperNode authentication). The material is minted once per job, as
one set of files, so that it is stored in one step and is never half there; each pod is
given only its own files from it (:func:`superlink_files`, :func:`node_files`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.core import tls

CA_CERT = "ca.crt"
SERVER_CERT = "tls.crt"
SERVER_KEY = "tls.key"
NODE_KEY = "auth.key"
"""A SuperNode's private key as its pod sees it, in OpenSSH format as Flower reads it."""
PUBLIC_KEY_SUFFIX = ".pub"
PRIVATE_KEY_SUFFIX = ".key"


def public_key_file(client: str) -> str:
    """The name of ``client``'s public key among the material (OpenSSH format)."""
    return f"{client}{PUBLIC_KEY_SUFFIX}"


def private_key_file(client: str) -> str:
    """The name of ``client``'s private key among the material."""
    return f"{client}{PRIVATE_KEY_SUFFIX}"


def superlink_files(clients: Sequence[str]) -> dict[str, str]:
    """What the SuperLink is given, by name in the material and name in its directory: the
    CA, its certificate and key, and every client's public key; no client's private key."""
    files = {name: name for name in (CA_CERT, SERVER_CERT, SERVER_KEY)}
    files.update({public_key_file(c): public_key_file(c) for c in clients})
    return files


def node_files(client: str) -> dict[str, str]:
    """What ``client``'s SuperNode is given: the CA to trust, and its own private key."""
    return {CA_CERT: CA_CERT, private_key_file(client): NODE_KEY}


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


def mint_credentials(hosts: Sequence[str], clients: Sequence[str]) -> dict[str, bytes]:
    """A fresh CA, a SuperLink certificate for ``hosts`` and a key pair per client. The CA's
    key is discarded: nothing else is ever signed for this federation."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        ca = tls.create_ca(directory, "modelfleet-federation-ca")
        server = tls.issue(ca, directory, "superlink", "superlink", hosts=list(hosts))
        material = {
            CA_CERT: ca.cert.read_bytes(),
            SERVER_CERT: server.cert.read_bytes(),
            SERVER_KEY: server.key.read_bytes(),
        }
    for client in clients:
        material[private_key_file(client)], material[public_key_file(client)] = _node_keys()
    return material


def write_credentials(
    directory: Path, material: Mapping[str, bytes], files: Mapping[str, str]
) -> Path:
    """The ``files`` of ``material`` under ``directory`` (created 0700), as the owner's alone,
    the way a pod's Secret volume gives them."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for source, name in files.items():
        path = directory / name
        path.write_bytes(material[source])
        path.chmod(0o600)
    return directory


def public_keys(directory: Path) -> dict[str, Path]:
    """The clients' public keys among a SuperLink's files, by client name."""
    return {
        path.name.removesuffix(PUBLIC_KEY_SUFFIX): path
        for path in sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}"))
    }
