"""The local backend fetches a pool's models before deploying it: real files, a real
S3-compatible server (moto over HTTP) and a credentials Secret's keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from modelfleet.artifacts.errors import ArtifactError
from modelfleet.backends.model_fetch import localize_models
from tests.unit.artifacts.builders import write_adapter_dir, write_model_dir

if TYPE_CHECKING:
    from conftest import S3Server


def test_local_models_become_file_uris_and_builtins_stay(tmp_path: Path) -> None:
    model, adapter = write_model_dir(tmp_path / "m"), write_adapter_dir(tmp_path / "a")
    config = {
        "replicas": 2,
        "models": [
            {
                "name": "x",
                "uri": f"file://{model}",
                "adapters": [{"name": "y", "uri": f"file://{adapter}"}],
            },
            {"name": "t", "uri": "builtin://tiny-llama"},
        ],
    }
    local = localize_models(config, "ns", None)
    assert local["replicas"] == 2
    assert local["models"][0]["uri"] == f"file://{model}"
    assert local["models"][0]["adapters"][0]["uri"] == f"file://{adapter}"
    assert local["models"][1]["uri"] == "builtin://tiny-llama"


def test_s3_models_are_fetched_with_the_secrets_credentials(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path / "cache"))
    for key in s3_server.env:
        monkeypatch.delenv(key, raising=False)
    s3_server.upload_dir(write_model_dir(tmp_path / "m"), "pool-models", "llama")
    secret = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    secrets = {("team", "creds"): secret}
    config = {
        "models": [{"name": "x", "uri": "s3://pool-models/llama", "credentialsSecret": "creds"}]
    }
    local = localize_models(config, "team", lambda ns, name: secrets.get((ns, name)))
    path = Path(local["models"][0]["uri"].removeprefix("file://"))
    assert path.is_relative_to(tmp_path / "cache")
    assert (path / "model.safetensors").read_bytes() == (
        tmp_path / "m" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(
        ArtifactError, match="credentialsSecret 'creds' does not exist in namespace 'other'"
    ):
        localize_models(config, "other", lambda ns, name: secrets.get((ns, name)))


def test_a_missing_model_names_its_uri_and_cause(tmp_path: Path) -> None:
    config = {"models": [{"name": "x", "uri": f"file://{tmp_path}/nothing"}]}
    with pytest.raises(ArtifactError, match=f"model 'file://{tmp_path}/nothing' is not usable"):
        localize_models(config, "ns", None)
