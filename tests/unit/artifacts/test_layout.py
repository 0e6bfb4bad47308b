"""The layout checks accept complete directories and name what is wrong with the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.artifacts.errors import ArtifactError
from modelfleet.artifacts.layout import check_adapter_dir, check_model_dir

from .builders import write_json

URI = "s3://b/k"


def test_complete_model_passes(model_dir: Path) -> None:
    check_model_dir(model_dir, URI)


def test_generation_config_is_optional(model_dir: Path) -> None:
    (model_dir / "generation_config.json").unlink()
    check_model_dir(model_dir, URI)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_missing_required_file_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    with pytest.raises(ArtifactError) as caught:
        check_model_dir(model_dir, URI)
    assert str(caught.value) == f"model 's3://b/k' is not usable: {name} is missing"
    assert caught.value.uri == URI
    assert caught.value.cause == f"{name} is missing"


def test_every_missing_file_is_named_at_once(model_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (model_dir / name).unlink()
    with pytest.raises(
        ArtifactError,
        match=r"tokenizer\.json, tokenizer_config\.json and \*\.safetensors weights are missing$",
    ):
        check_model_dir(model_dir, URI)


def test_sharded_weights_need_every_shard_of_the_index(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.rename(model_dir / "model-00001-of-00002.safetensors")
    write_json(
        model_dir / "model.safetensors.index.json",
        {
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            }
        },
    )
    with pytest.raises(ArtifactError, match=r"model-00002-of-00002\.safetensors is missing"):
        check_model_dir(model_dir, URI)
    (model_dir / "model-00002-of-00002.safetensors").write_bytes(b"")
    check_model_dir(model_dir, URI)


def test_index_without_weight_map_is_refused(model_dir: Path) -> None:
    write_json(model_dir / "model.safetensors.index.json", {"metadata": {}})
    with pytest.raises(ArtifactError, match="has no weight_map"):
        check_model_dir(model_dir, URI)


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("{not json", "config.json is not valid JSON"),
        ("[1, 2]", "config.json is not a JSON object"),
    ],
)
def test_config_must_be_a_json_object(model_dir: Path, content: str, cause: str) -> None:
    (model_dir / "config.json").write_text(content)
    with pytest.raises(ArtifactError, match=cause):
        check_model_dir(model_dir, URI)


def test_missing_directory_and_file_instead_of_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        check_model_dir(tmp_path / "absent", URI)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is not a directory"):
        check_adapter_dir(tmp_path / "file", URI)


def test_complete_adapter_passes(adapter_dir: Path) -> None:
    check_adapter_dir(adapter_dir, URI)


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_adapter_missing_file_is_named(adapter_dir: Path, name: str) -> None:
    (adapter_dir / name).unlink()
    with pytest.raises(ArtifactError) as caught:
        check_adapter_dir(adapter_dir, URI)
    assert str(caught.value) == f"adapter 's3://b/k' is not usable: {name} is missing"


def test_adapter_config_must_be_a_json_object(adapter_dir: Path) -> None:
    (adapter_dir / "adapter_config.json").write_text('"lora"')
    with pytest.raises(ArtifactError, match=r"adapter_config\.json is not a JSON object"):
        check_adapter_dir(adapter_dir, URI)
