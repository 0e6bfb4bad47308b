"""Credentials for s3:// and hf:// artifacts, from the Kubernetes Secret a spec names.

The Secret's keys become environment variables of the runtime, where boto3 and
huggingface_hub pick them up through their default chains. Only known keys pass, so a typo
fails when the spec is applied rather than as an access error inside a replica. Messages
name keys, never values.
"""

from __future__ import annotations

from collections.abc import Mapping

ALLOWED_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "HF_TOKEN",
)
KEY_PAIR = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def credential_env(secret_data: Mapping[str, str], secret_name: str) -> dict[str, str]:
    """The environment variables for the runtime, from the Secret's decoded ``data``."""
    unknown = sorted(set(secret_data) - set(ALLOWED_KEYS))
    if unknown:
        raise ValueError(
            f"Secret {secret_name!r} has unknown keys {', '.join(unknown)}; "
            f"allowed keys are {', '.join(ALLOWED_KEYS)}"
        )
    empty = sorted(key for key, value in secret_data.items() if not value)
    if empty:
        raise ValueError(f"Secret {secret_name!r} has empty values for {', '.join(empty)}")
    present = [key for key in KEY_PAIR if key in secret_data]
    if present and len(present) < len(KEY_PAIR):
        missing = next(key for key in KEY_PAIR if key not in secret_data)
        raise ValueError(
            f"Secret {secret_name!r} has {present[0]} without {missing}; S3 needs both"
        )
    if "AWS_SESSION_TOKEN" in secret_data and not present:
        raise ValueError(
            f"Secret {secret_name!r} has AWS_SESSION_TOKEN without "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; S3 needs all three"
        )
    endpoint = secret_data.get("AWS_ENDPOINT_URL", "")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"Secret {secret_name!r}: AWS_ENDPOINT_URL must start with http:// or https://"
        )
    return {key: secret_data[key] for key in ALLOWED_KEYS if key in secret_data}
