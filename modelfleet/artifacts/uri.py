"""Artifact URIs: one syntax for where a model or adapter lives, checked before anything runs.

Specs are validated when they are applied, so every malformed URI is rejected there with a
message that names the spec field and shows the accepted forms, instead of failing later
inside a replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

Scheme = Literal["file", "pvc", "s3", "hf", "zoo"]

ACCEPTED_FORMS = (
    "file:///<absolute dir>, pvc://<claim>/<path>, s3://<bucket>/<key prefix>, "
    "hf://<org>/<name>[@<revision>] or zoo://<name>"
)
PVC_MOUNT_ROOT = PurePosixPath("/mnt/pvc")

_CLAIM = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_HF_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_ZOO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class ArtifactUri:
    """A parsed artifact URI.

    ``name`` is the claim (pvc), bucket (s3), repository id (hf) or zoo model name, and empty
    for file. ``path`` is the absolute directory (file), the directory inside the claim (pvc,
    empty for the claim's root) or the key prefix without its trailing slash (s3), and empty
    for hf and zoo. ``revision`` is the hf branch, tag or commit, if one was given.
    """

    raw: str
    scheme: Scheme
    name: str = ""
    path: str = ""
    revision: str | None = None


def parse_artifact_uri(uri: str, field: str) -> ArtifactUri:
    """Parse ``uri``, the value of the spec field ``field``; ``ValueError`` says what to write."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        raise _invalid(field, uri, "is not an artifact URI")
    if any(character.isspace() for character in uri):
        raise _invalid(field, uri, "contains whitespace")
    match scheme:
        case "file":
            return _parse_file(uri, rest, field)
        case "pvc":
            return _parse_pvc(uri, rest, field)
        case "s3":
            return _parse_s3(uri, rest, field)
        case "hf":
            return _parse_hf(uri, rest, field)
        case "zoo":
            return _parse_zoo(uri, rest, field)
    raise _invalid(field, uri, f"has an unknown scheme {scheme!r}")


def pvc_mount(uri: ArtifactUri) -> tuple[str, str]:
    """The claim of a pvc:// URI and where runtime pods mount it (read-only) on a cluster."""
    if uri.scheme != "pvc":
        raise ValueError(f"{uri.raw!r} is not a pvc:// URI")
    return uri.name, str(PVC_MOUNT_ROOT / uri.name)


def _invalid(field: str, uri: str, problem: str, fix: str = "") -> ValueError:
    return ValueError(f"{field}: {uri!r} {problem}; {fix or 'write one of ' + ACCEPTED_FORMS}")


def _parse_file(uri: str, rest: str, field: str) -> ArtifactUri:
    path = PurePosixPath(rest)
    if not rest.startswith("/") or len(path.parts) < 2:
        raise _invalid(
            field,
            uri,
            "does not name an absolute directory",
            "write file:/// and the absolute path, e.g. file:///data/models/tiny",
        )
    return ArtifactUri(raw=uri, scheme="file", path=str(path))


def _parse_pvc(uri: str, rest: str, field: str) -> ArtifactUri:
    claim, _, path = rest.partition("/")
    if not _CLAIM.fullmatch(claim):
        raise _invalid(
            field,
            uri,
            "does not start with a PersistentVolumeClaim name",
            "write pvc://<claim>/<path>, e.g. pvc://models/llama-3-8b "
            "(claim names are lowercase letters, digits, '-' and '.')",
        )
    segments = relative_segments(path)
    if segments is None:
        raise _invalid(
            field,
            uri,
            "has an empty, '.' or '..' path segment",
            "write a plain path inside the claim, e.g. pvc://models/llama-3-8b",
        )
    return ArtifactUri(raw=uri, scheme="pvc", name=claim, path="/".join(segments))


def _parse_s3(uri: str, rest: str, field: str) -> ArtifactUri:
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise _invalid(
            field,
            uri,
            "does not start with a valid bucket name",
            "write s3://<bucket>/<key prefix>, e.g. s3://models/llama-3-8b "
            "(bucket names are 3-63 lowercase letters, digits, '-' and '.')",
        )
    segments = relative_segments(prefix)
    if segments is None:
        raise _invalid(
            field,
            uri,
            "has an empty, '.' or '..' key segment",
            "write s3://<bucket>/<key prefix>, e.g. s3://models/llama-3-8b",
        )
    if not segments:
        raise _invalid(
            field,
            uri,
            "does not name a key prefix (a directory of objects)",
            "write s3://<bucket>/<key prefix>, e.g. s3://models/llama-3-8b",
        )
    return ArtifactUri(raw=uri, scheme="s3", name=bucket, path="/".join(segments))


def _parse_hf(uri: str, rest: str, field: str) -> ArtifactUri:
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(_HF_PART.fullmatch(part) for part in parts):
        raise _invalid(
            field,
            uri,
            "does not name a Hugging Face repository",
            "write hf://<org>/<name> or hf://<name>, optionally with @<revision>, "
            "e.g. hf://Qwen/Qwen2.5-0.5B-Instruct@main",
        )
    if at and not _HF_REVISION.fullmatch(revision):
        raise _invalid(
            field,
            uri,
            "has an empty or malformed revision after '@'",
            "write a branch, tag or commit after '@', e.g. hf://Qwen/Qwen2.5-0.5B-Instruct@main",
        )
    return ArtifactUri(raw=uri, scheme="hf", name=repo_id, revision=revision if at else None)


def _parse_zoo(uri: str, rest: str, field: str) -> ArtifactUri:
    if not _ZOO_NAME.fullmatch(rest):
        raise _invalid(
            field,
            uri,
            "does not name a zoo model",
            "write zoo://<name>, e.g. zoo://tiny (letters, digits, '.', '_' and '-')",
        )
    return ArtifactUri(raw=uri, scheme="zoo", name=rest)


def relative_segments(path: str) -> list[str] | None:
    """The segments of a relative path with one trailing slash allowed; None if any is unsafe.

    Unsafe segments would let a URI escape its claim or collide in the local cache.
    """
    if not path:
        return []
    segments = path.removesuffix("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return segments
