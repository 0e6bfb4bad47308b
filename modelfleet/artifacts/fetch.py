"""Turn an artifact URI into a local directory an engine can load, whatever the scheme."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from modelfleet.artifacts.cache import default_cache_root, zoo_dir
from modelfleet.artifacts.errors import ArtifactError, ArtifactKind
from modelfleet.artifacts.hub import download_hub_snapshot
from modelfleet.artifacts.layout import check_artifact_dir
from modelfleet.artifacts.s3 import download_s3_dir
from modelfleet.artifacts.uri import PVC_MOUNT_ROOT, ArtifactUri, parse_artifact_uri

LOCAL_BACKEND_HINT = (
    "pvc:// claims are mounted into the runtime pods on a cluster (--backend=kuberay); "
    "on the local backend use file:///<absolute dir> instead"
)


def materialize(
    uri: str,
    field: str,
    kind: ArtifactKind = "model",
    *,
    cache_root: Path | None = None,
    pvc_root: Path = Path(PVC_MOUNT_ROOT),
    timeout_s: float = 60,
    credentials: Mapping[str, str] | None = None,
) -> Path:
    """A local directory holding the artifact, checked against the layout for ``kind``.

    A malformed ``uri`` raises ``ValueError`` naming ``field``; an artifact that cannot be
    fetched or has the wrong layout raises ``ArtifactError``. Local schemes (file, pvc, zoo)
    are used in place; s3 and hf are downloaded into caches and reused while unchanged.
    ``cache_root`` defaults to ``$MODELFLEET_CACHE`` or ``~/.cache/modelfleet``.
    ``credentials`` are a credentials Secret's keys (see :func:`credential_env`); without
    them s3 and hf read the process environment.
    """
    parsed = parse_artifact_uri(uri, field)
    root = cache_root if cache_root is not None else default_cache_root()
    try:
        path = _fetch(parsed, kind, root, pvc_root, timeout_s, credentials)
        check_artifact_dir(path, uri, kind)
    except ArtifactError as error:
        raise error.in_field(field) from error
    return path


def _fetch(
    parsed: ArtifactUri,
    kind: ArtifactKind,
    root: Path,
    pvc_root: Path,
    timeout_s: float,
    credentials: Mapping[str, str] | None,
) -> Path:
    """The local directory of ``parsed``, downloading it if its scheme needs that."""
    match parsed.scheme:
        case "file":
            return Path(parsed.path)
        case "zoo":
            return _zoo_path(parsed, kind, root)
        case "pvc":
            return _pvc_path(parsed, kind, pvc_root)
        case "s3":
            return download_s3_dir(parsed, kind, root, timeout_s, credentials)
        case "hf":
            token = None if credentials is None else credentials.get("HF_TOKEN")
            return download_hub_snapshot(parsed, kind, timeout_s, token)


def _zoo_path(uri: ArtifactUri, kind: ArtifactKind, cache_root: Path) -> Path:
    path = zoo_dir(uri.name, cache_root)
    if not path.is_dir():
        cause = (
            f"zoo model {uri.name!r} has not been built on this machine (looked in {path}); "
            f"run: python -m modelfleet.zoo build {uri.name}"
        )
        raise ArtifactError(uri.raw, cause, kind)
    return path


def _pvc_path(uri: ArtifactUri, kind: ArtifactKind, pvc_root: Path) -> Path:
    mount = pvc_root / uri.name
    if not mount.is_dir():
        cause = f"claim {uri.name!r} is not mounted at {mount}; {LOCAL_BACKEND_HINT}"
        raise ArtifactError(uri.raw, cause, kind)
    path = mount / uri.path
    if not path.is_dir():
        raise ArtifactError(uri.raw, f"{uri.path!r} is not a directory in claim {uri.name!r}", kind)
    return path
