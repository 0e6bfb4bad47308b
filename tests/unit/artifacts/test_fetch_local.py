"""file://, zoo:// and pvc:// artifacts are used in place, after the layout check."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from modelfleet.artifacts.cache import default_cache_root
from modelfleet.artifacts.errors import ArtifactError
from modelfleet.artifacts.fetch import materialize

FIELD = "spec.models[0].uri"


def test_file_uri_is_the_directory_itself(model_dir: Path) -> None:
    assert materialize(f"file://{model_dir}", FIELD) == model_dir


def test_file_uri_of_an_adapter(adapter_dir: Path) -> None:
    assert materialize(f"file://{adapter_dir}", FIELD, "adapter") == adapter_dir


def test_file_uri_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=re.escape(
            f"'file://{tmp_path}/absent' is not usable: {tmp_path}/absent does not exist"
        ),
    ):
        materialize(f"file://{tmp_path}/absent", FIELD)


def test_model_uri_read_as_adapter_names_the_missing_adapter_files(model_dir: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=(
            r"^spec\.models\[0\]\.uri: adapter .* "
            r"adapter_config\.json and adapter_model\.safetensors are missing$"
        ),
    ):
        materialize(f"file://{model_dir}", FIELD, "adapter")


def test_malformed_uri_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^spec\.models\[0\]\.uri: 'file://relative'"):
        materialize("file://relative", FIELD)


def test_zoo_uri_is_found_under_the_cache_root(model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(model_dir, cache / "zoo" / "tiny")
    assert materialize("zoo://tiny", FIELD, cache_root=cache) == cache / "zoo" / "tiny"


def test_zoo_uri_defaults_to_modelfleet_cache(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path / "cache"))
    shutil.copytree(model_dir, tmp_path / "cache" / "zoo" / "tiny")
    assert materialize("zoo://tiny", FIELD) == tmp_path / "cache" / "zoo" / "tiny"


def test_default_cache_root_without_modelfleet_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", "")
    assert default_cache_root() == Path.home() / ".cache" / "modelfleet"
    monkeypatch.delenv("MODELFLEET_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "modelfleet"


def test_unbuilt_zoo_model_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        materialize("zoo://tiny", FIELD, cache_root=tmp_path)
    assert "python -m modelfleet.zoo build tiny" in caught.value.cause
    assert str(tmp_path / "zoo" / "tiny") in caught.value.cause


def test_pvc_uri_is_read_under_the_mount_root(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "mnt" / "models" / "llama" / "8b")
    path = materialize("pvc://models/llama/8b", FIELD, pvc_root=tmp_path / "mnt")
    assert path == tmp_path / "mnt" / "models" / "llama" / "8b"


def test_pvc_claim_root(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "mnt" / "models")
    assert (
        materialize("pvc://models", FIELD, pvc_root=tmp_path / "mnt") == tmp_path / "mnt" / "models"
    )


def test_unmounted_claim_says_pvc_works_on_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        materialize("pvc://models/llama", FIELD, pvc_root=tmp_path)
    assert "not mounted" in caught.value.cause
    assert "--backend=kuberay" in caught.value.cause
    assert "file:///" in caught.value.cause


def test_missing_path_in_a_mounted_claim(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(ArtifactError, match="'llama' is not a directory in claim 'models'"):
        materialize("pvc://models/llama", FIELD, pvc_root=tmp_path)
