"""hf:// artifacts: a cached snapshot needs no network; otherwise failure is fast and clear."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from modelfleet.artifacts.errors import ArtifactError
from modelfleet.artifacts.fetch import materialize

from .builders import write_model_dir

FIELD = "spec.models[0].uri"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, and a Hub endpoint where nothing listens."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{probe.getsockname()[1]}")
    return cache


def cache_snapshot(cache: Path, repo_id: str) -> Path:
    """What ``snapshot_download`` leaves behind: refs/main naming a snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return write_model_dir(repo / "snapshots" / COMMIT)


def test_cached_snapshot_is_used_without_the_hub(hf_cache: Path) -> None:
    snapshot = cache_snapshot(hf_cache, "acme/tiny")
    assert materialize("hf://acme/tiny", FIELD) == snapshot
    assert materialize(f"hf://acme/tiny@{COMMIT}", FIELD) == snapshot


def test_offline_mode_fails_at_once(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(ArtifactError) as caught:
        materialize("hf://acme/absent", FIELD)
    assert time.monotonic() - started < 1
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in caught.value.cause
    assert "use file://, s3:// or pvc://" in caught.value.cause


def test_unreachable_hub_fails_in_seconds_with_the_alternatives(hf_cache: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ArtifactError) as caught:
        materialize("hf://acme/absent", FIELD, timeout_s=2)
    assert time.monotonic() - started < 5
    assert caught.value.cause.startswith("the Hugging Face Hub could not be reached")
    assert "cluster with internet access or a pre-populated Hugging Face cache" in str(caught.value)


def test_default_hub_endpoint_never_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without internet the Hub is unreachable; with it the repository does not exist."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(
        ArtifactError, match=r"^spec\.models\[0\]\.uri: model 'hf://modelfleet-tests/absent-model' "
    ):
        materialize("hf://modelfleet-tests/absent-model", FIELD, timeout_s=5)
    assert time.monotonic() - started < 15
