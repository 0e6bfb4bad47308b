"""A credentials Secret becomes runtime env; mistakes name keys, never values."""

from __future__ import annotations

import pytest

from modelfleet.artifacts.credentials import credential_env

SECRET = "model-store"


def test_known_keys_pass_through() -> None:
    data = {
        "AWS_ACCESS_KEY_ID": "AKIA-EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "token-value",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://minio.storage:9000",
        "HF_TOKEN": "hf_value",
    }
    assert credential_env(data, SECRET) == data


def test_hub_token_alone() -> None:
    assert credential_env({"HF_TOKEN": "hf_value"}, SECRET) == {"HF_TOKEN": "hf_value"}


def test_unknown_key_names_the_secret_and_the_allowed_keys() -> None:
    with pytest.raises(ValueError) as caught:
        credential_env({"AWS_SECRET_KEY": "s3cr3t-value", "HF_TOKEN": "hf_value"}, SECRET)
    message = str(caught.value)
    assert "'model-store'" in message
    assert "AWS_SECRET_KEY" in message
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in message
    assert "s3cr3t-value" not in message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIA-EXAMPLE"}, "AWS_ACCESS_KEY_ID without AWS_SECRET_ACCESS_KEY"),
        (
            {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"},
            "AWS_SECRET_ACCESS_KEY without AWS_ACCESS_KEY_ID",
        ),
        ({"AWS_SESSION_TOKEN": "s3cr3t-value"}, "AWS_SESSION_TOKEN without"),
        ({"HF_TOKEN": ""}, "empty values for HF_TOKEN"),
        ({"AWS_ENDPOINT_URL": "minio:9000"}, "must start with http:// or https://"),
    ],
)
def test_incomplete_or_malformed_secrets(data: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        credential_env(data, SECRET)
    assert "'model-store'" in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)
