"""hf:// artifacts: the local Hugging Face cache first, the Hub only when it can answer.

Many clusters have no route to the internet, so a replica must never wait on the Hub: a
cached snapshot is used without a request, offline mode fails at once, and an online
attempt has bounded timeouts and ends in a message that says what to use instead.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from modelfleet.artifacts.errors import ArtifactError, ArtifactKind
from modelfleet.artifacts.uri import ArtifactUri

METADATA_TIMEOUT_S = 10.0
ARTIFACT_FILES = ["*.json", "*.safetensors", "*.jinja"]
ALTERNATIVES = (
    "hf:// needs a cluster with internet access or a pre-populated Hugging Face cache "
    "(HF_HOME); otherwise use file://, s3:// or pvc://"
)


def download_hub_snapshot(
    uri: ArtifactUri, kind: ArtifactKind, timeout_s: float, token: str | None = None
) -> Path:
    """The snapshot directory of the URI's repository and revision.

    Only the files the fleet loads are fetched (JSON, safetensors, chat templates), so a
    repository that also ships ``.bin`` or ONNX weights is not downloaded twice over.
    ``token`` (a credentials Secret's ``HF_TOKEN``), or ``HF_TOKEN`` in the environment,
    reaches private and gated repositories.
    """
    try:
        return _snapshot(uri, local_files_only=True, etag_timeout=METADATA_TIMEOUT_S, token=token)
    except LocalEntryNotFoundError:
        pass
    if is_offline_mode():
        cause = (
            f"it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {ALTERNATIVES}"
        )
        raise ArtifactError(uri.raw, cause, kind)
    try:
        return _snapshot(
            uri,
            local_files_only=False,
            etag_timeout=min(METADATA_TIMEOUT_S, timeout_s),
            token=token,
        )
    except RevisionNotFoundError as error:
        cause = f"the Hub has no revision {uri.revision!r} of {uri.name!r}"
        raise ArtifactError(uri.raw, cause, kind) from error
    except RepositoryNotFoundError as error:
        cause = (
            f"the Hub has no repository {uri.name!r}, or it is private or gated "
            "(put HF_TOKEN in the credentials Secret)"
        )
        raise ArtifactError(uri.raw, cause, kind) from error
    except Exception as error:
        cause = f"the Hugging Face Hub could not be reached ({_first_line(error)}); {ALTERNATIVES}"
        raise ArtifactError(uri.raw, cause, kind) from error


def _snapshot(
    uri: ArtifactUri, *, local_files_only: bool, etag_timeout: float, token: str | None
) -> Path:
    return Path(
        snapshot_download(
            uri.name,
            revision=uri.revision,
            allow_patterns=ARTIFACT_FILES,
            local_files_only=local_files_only,
            etag_timeout=etag_timeout,
            token=token,
        )
    )


def _first_line(error: BaseException) -> str:
    """The innermost cause's first line: the library's wrappers hide what actually failed."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
