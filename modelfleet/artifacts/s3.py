"""Download an s3:// directory into the local cache, once per version of its content.

Replicas restart often and several may start on one machine at once, so a download is
published under a digest of the listed keys and ETags with an atomic rename: an unchanged
directory is reused without transferring a byte, a changed object lands in a new directory,
and two processes fetching the same URI never see each other's half-written files.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from modelfleet.artifacts.errors import ArtifactError, ArtifactKind
from modelfleet.artifacts.uri import ArtifactUri, relative_segments

CONNECT_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 2
CHUNK_BYTES = 1 << 20
WHERE_CREDENTIALS_GO = "(on a cluster, in the credentials Secret)"
ACCESS_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)


@dataclass(frozen=True)
class _Object:
    key: str
    relative_path: str
    etag: str


def download_s3_dir(
    uri: ArtifactUri,
    kind: ArtifactKind,
    cache_root: Path,
    timeout_s: float,
    credentials: Mapping[str, str] | None = None,
) -> Path:
    """The local copy of every object under the URI's prefix, downloaded only if not cached.

    Credentials, region and endpoint come from ``credentials`` (the ``AWS_*`` keys of a
    credentials Secret) when given, else from boto3's default chain (``AWS_*`` variables
    included, ``AWS_ENDPOINT_URL`` for S3-compatible servers). ``timeout_s`` bounds each
    read; connecting is bounded by at most ``CONNECT_TIMEOUT_S``.
    """
    client = _client(timeout_s, credentials)
    try:
        objects = _list_objects(client, uri, kind)
        target = cache_root / "artifacts" / "s3" / uri.name / uri.path / _digest(objects)
        if not target.is_dir():
            _download(client, uri.name, objects, target)
    except NoCredentialsError as error:
        cause = (
            "no S3 credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            + WHERE_CREDENTIALS_GO
        )
        raise ArtifactError(uri.raw, cause, kind) from error
    except (BotoConnectionError, HTTPClientError) as error:
        cause = f"the S3 endpoint {client.meta.endpoint_url} could not be reached: {error}"
        raise ArtifactError(uri.raw, cause, kind) from error
    except ClientError as error:
        raise ArtifactError(uri.raw, _describe_client_error(error, uri), kind) from error
    except BotoCoreError as error:
        raise ArtifactError(uri.raw, f"the S3 request failed: {error}", kind) from error
    except OSError as error:
        cause = f"it could not be stored under {cache_root}: {error}"
        raise ArtifactError(uri.raw, cause, kind) from error
    return target


def _client(timeout_s: float, credentials: Mapping[str, str] | None) -> Any:
    """A client from a fresh session, so credentials are read now: from ``credentials``
    when given (nothing of the environment is mixed in then), else the environment."""
    config = Config(
        connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
        read_timeout=timeout_s,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    if credentials is None:
        return boto3.session.Session().client("s3", config=config)
    session = boto3.session.Session(
        aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
        region_name=credentials.get("AWS_DEFAULT_REGION"),
    )
    return session.client("s3", config=config, endpoint_url=credentials.get("AWS_ENDPOINT_URL"))


def _list_objects(client: Any, uri: ArtifactUri, kind: ArtifactKind) -> list[_Object]:
    prefix = uri.path + "/"
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.name, Prefix=prefix):
        for item in page.get("Contents", []):
            key = str(item["Key"])
            if key.endswith("/"):
                continue
            relative_path = key.removeprefix(prefix)
            if relative_segments(relative_path) is None:
                cause = f"object key {key!r} has an empty, '.' or '..' segment"
                raise ArtifactError(uri.raw, cause, kind)
            objects.append(_Object(key, relative_path, str(item["ETag"])))
    if not objects:
        raise ArtifactError(uri.raw, f"there are no objects under s3://{uri.name}/{prefix}", kind)
    return objects


def _digest(objects: list[_Object]) -> str:
    """Names one version of the directory: the same keys with the same ETags, the same name."""
    listing = sorted(f"{item.relative_path}\0{item.etag}" for item in objects)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def _download(client: Any, bucket: str, objects: list[_Object], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for item in objects:
            _download_object(client, bucket, item, staging / item.relative_path)
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_object(client: Any, bucket: str, item: _Object, destination: Path) -> None:
    """One object, refused by the server if it no longer has the listed ETag."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    response = client.get_object(Bucket=bucket, Key=item.key, IfMatch=item.etag)
    with closing(response["Body"]) as body, destination.open("wb") as out:
        shutil.copyfileobj(body, out, CHUNK_BYTES)


def _publish(staging: Path, target: Path) -> None:
    """Rename into place; if another process got there first, its identical copy stands."""
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise


def _describe_client_error(error: ClientError, uri: ArtifactUri) -> str:
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    if code == "NoSuchBucket":
        return f"bucket {uri.name!r} does not exist"
    if code in ACCESS_DENIED_CODES:
        return (
            f"access was denied ({code}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            f"and AWS_SESSION_TOKEN {WHERE_CREDENTIALS_GO}"
        )
    if code in ("412", "PreconditionFailed"):
        return "an object changed while it was being downloaded; try again"
    return f"S3 answered {code}: {details.get('Message', error)}"
