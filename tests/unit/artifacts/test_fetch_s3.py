"""s3:// artifacts against a real S3-compatible server (moto over HTTP, authentication on)."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from modelfleet.artifacts.errors import ArtifactError
from modelfleet.artifacts.fetch import materialize

from .builders import write_json

if TYPE_CHECKING:
    from conftest import S3Server

FIELD = "spec.models[0].uri"


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with boto3's default chain in this process pointed at it."""
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def bucket() -> str:
    return f"models-{uuid.uuid4().hex[:12]}"


def files_of(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def test_downloads_reuses_and_refetches_on_change(
    s3: S3Server, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    s3.upload_dir(model_dir, bucket, "runs/7/model")
    cache = tmp_path / "cache"

    first = materialize(f"s3://{bucket}/runs/7/model", FIELD, cache_root=cache)
    assert first.parent == cache / "artifacts" / "s3" / bucket / "runs" / "7" / "model"
    assert files_of(first) == files_of(model_dir)

    config = first / "config.json"
    before = config.stat()
    again = materialize(f"s3://{bucket}/runs/7/model/", FIELD, cache_root=cache)
    assert again == first
    assert (config.stat().st_ino, config.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    write_json(model_dir / "config.json", {"model_type": "llama", "hidden_size": 16})
    s3.upload_dir(model_dir, bucket, "runs/7/model")
    changed = materialize(f"s3://{bucket}/runs/7/model", FIELD, cache_root=cache)
    assert changed.parent == first.parent
    assert changed.name != first.name
    assert files_of(changed) == files_of(model_dir)
    assert first.is_dir()
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, changed.name])


def test_prefix_is_a_directory_not_a_string_prefix(
    s3: S3Server, bucket: str, model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    s3.upload_dir(adapter_dir, bucket, "lora")
    s3.upload_dir(model_dir, bucket, "lora-base")
    path = materialize(f"s3://{bucket}/lora", FIELD, "adapter", cache_root=tmp_path)
    assert files_of(path) == files_of(adapter_dir)


def test_concurrent_materializations_share_one_directory(
    s3: S3Server, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    s3.upload_dir(model_dir, bucket, "model")
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(
            pool.map(
                lambda _: materialize(f"s3://{bucket}/model", FIELD, cache_root=tmp_path),
                range(3),
            )
        )
    assert len(set(paths)) == 1
    assert [p.name for p in paths[0].parent.iterdir()] == [paths[0].name]
    assert files_of(paths[0]) == files_of(model_dir)


def test_incomplete_model_fails_the_layout_check(
    s3: S3Server, bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    (model_dir / "tokenizer.json").unlink()
    s3.upload_dir(model_dir, bucket, "model")
    with pytest.raises(ArtifactError) as caught:
        materialize(f"s3://{bucket}/model", FIELD, cache_root=tmp_path)
    assert str(caught.value) == (
        f"{FIELD}: model 's3://{bucket}/model' is not usable: tokenizer.json is missing"
    )


def test_empty_prefix(s3: S3Server, bucket: str, model_dir: Path, tmp_path: Path) -> None:
    s3.upload_dir(model_dir, bucket, "model")
    with pytest.raises(
        ArtifactError, match=re.escape(f"there are no objects under s3://{bucket}/other/")
    ):
        materialize(f"s3://{bucket}/other", FIELD, cache_root=tmp_path)


def test_missing_bucket(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket' does not exist"):
        materialize("s3://no-such-bucket/model", FIELD, cache_root=tmp_path)


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials_are_denied(
    s3: S3Server,
    bucket: str,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    s3.upload_dir(model_dir, bucket, "model")
    monkeypatch.setenv(variable, "wrong")
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="access was denied") as caught:
        materialize(f"s3://{bucket}/model", FIELD, cache_root=tmp_path)
    assert time.monotonic() - started < 5
    assert "wrong" not in str(caught.value)
    assert not (tmp_path / "artifacts" / "s3" / bucket / "model").exists()


def test_no_credentials(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ArtifactError, match="no S3 credentials were found"):
        materialize("s3://bucket/model", FIELD, cache_root=tmp_path)


def test_unreachable_endpoint_fails_in_seconds(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    started = time.monotonic()
    with pytest.raises(
        ArtifactError, match=re.escape(f"the S3 endpoint {closed} could not be reached")
    ):
        materialize("s3://bucket/model", FIELD, cache_root=tmp_path)
    assert time.monotonic() - started < 5


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers, like a server that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_silent_endpoint_times_out(
    s3: S3Server, silent_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="could not be reached"):
        materialize("s3://bucket/model", FIELD, cache_root=tmp_path, timeout_s=1)
    assert time.monotonic() - started < 6


def test_a_secrets_credentials_are_used_instead_of_the_environment(
    s3: S3Server, bucket: str, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.upload_dir(model_dir, bucket, "model")
    secret = dict(s3.env)
    for key in s3.env:
        monkeypatch.delenv(key)
    path = materialize(f"s3://{bucket}/model", FIELD, cache_root=tmp_path, credentials=secret)
    assert files_of(path) == files_of(model_dir)
    wrong = {**secret, "AWS_SECRET_ACCESS_KEY": "wrong"}
    with pytest.raises(ArtifactError, match="access was denied"):
        materialize(f"s3://{bucket}/model", FIELD, cache_root=tmp_path / "b", credentials=wrong)
