"""The two directory layouts the fleet exchanges, checked before an engine tries to load one.

A replica that finds a file missing half-way through loading fails with a stack trace from
deep inside transformers; checking the layout first turns that into one sentence naming the
artifact and the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelfleet.artifacts.errors import ArtifactError, ArtifactKind

MODEL_CONFIG = "config.json"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_model_dir(path: Path, uri: str) -> None:
    """Raise ``ArtifactError`` unless ``path`` holds a loadable Hugging Face model.

    ``generation_config.json`` is not required: many published checkpoints lack it and the
    engines fall back to the model's defaults.
    """
    _check_is_dir(path, uri, "model")
    missing = [name for name in (MODEL_CONFIG, *TOKENIZER_FILES) if not (path / name).is_file()]
    missing += _missing_weights(path, uri)
    if missing:
        raise ArtifactError(uri, _describe_missing(missing), "model")
    _load_json_object(path / MODEL_CONFIG, uri, "model")


def check_adapter_dir(path: Path, uri: str) -> None:
    """Raise ``ArtifactError`` unless ``path`` holds a PEFT LoRA adapter."""
    _check_is_dir(path, uri, "adapter")
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise ArtifactError(uri, _describe_missing(missing), "adapter")
    _load_json_object(path / ADAPTER_CONFIG, uri, "adapter")


def check_artifact_dir(path: Path, uri: str, kind: ArtifactKind) -> None:
    """The layout check for ``kind``."""
    if kind == "model":
        check_model_dir(path, uri)
    else:
        check_adapter_dir(path, uri)


def _check_is_dir(path: Path, uri: str, kind: ArtifactKind) -> None:
    if not path.exists():
        raise ArtifactError(uri, f"{path} does not exist", kind)
    if not path.is_dir():
        raise ArtifactError(uri, f"{path} is not a directory", kind)


def _missing_weights(path: Path, uri: str) -> list[str]:
    """Weights are one or more ``*.safetensors`` files, or the shards a sharded index lists."""
    index_path = path / WEIGHTS_INDEX
    if not index_path.is_file():
        return [] if any(path.glob("*.safetensors")) else ["*.safetensors weights"]
    weight_map = _load_json_object(index_path, uri, "model").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ArtifactError(uri, f"{WEIGHTS_INDEX} has no weight_map", "model")
    shards = sorted({str(shard) for shard in weight_map.values()})
    return [shard for shard in shards if not (path / shard).is_file()]


def _load_json_object(path: Path, uri: str, kind: ArtifactKind) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(uri, f"{path.name} is not valid JSON ({error})", kind) from error
    if not isinstance(value, dict):
        raise ArtifactError(uri, f"{path.name} is not a JSON object", kind)
    return value


def _describe_missing(names: list[str]) -> str:
    if len(names) == 1:
        return f"{names[0]} is missing"
    return f"{', '.join(names[:-1])} and {names[-1]} are missing"
