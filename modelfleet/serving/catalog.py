"""Resolve a ServedModel to what its replicas build.

* ``builtin://<name>``: a config whose weights are drawn from its seed (random weights
  behind the byte tokenizer, for fast tests); every replica gets the same model.
* Any artifact URI (``file://``, ``pvc://``, ``s3://``, ``hf://``, ``zoo://``; see
  docs/artifacts.md) on the torch engine: a :class:`CheckpointModel`, a Hugging Face
  directory the replica materializes and loads, with its LoRA adapters.
* ``engine: VLLM``: a :class:`VllmModel`; ``hf://`` ids go to vLLM as they are (it
  downloads them), other URIs are materialized by the replica first.

Resolution is pure: nothing is read or downloaded here, so the ingress and the operator
can check a spec without touching storage. URIs are parsed, so a malformed one fails
here with the field named.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelfleet.api.modelpool import Engine, ServedModel
from modelfleet.artifacts.uri import parse_artifact_uri
from modelfleet.serving.model import ModelConfig
from modelfleet.serving.vllm_engine import VllmModel

BUILTIN_MODELS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(),
    "tiny-llama-mini": ModelConfig(num_layers=2, hidden_size=64, intermediate_size=176),
}
"""``tiny-llama`` is the default tiny decoder; ``-mini`` is a smaller one for fast tests."""

BUILTIN_SCHEME = "builtin://"


@dataclass(frozen=True)
class AdapterSource:
    """A LoRA adapter to load next to its base: its served name, URI and spec field."""

    name: str
    uri: str
    field: str


@dataclass(frozen=True)
class CheckpointModel:
    """A Hugging Face checkpoint the torch engine serves; plain data for the replica."""

    uri: str
    field: str
    """The spec field of ``uri`` (``spec.models[i].uri``), named in every error."""
    max_model_len: int
    adapters: tuple[AdapterSource, ...] = ()


def resolve_model(uri: str, max_model_len: int) -> ModelConfig:
    """The config of builtin ``uri`` with ``max_positions = max_model_len``."""
    name = uri.removeprefix(BUILTIN_SCHEME)
    if name not in BUILTIN_MODELS:
        raise ValueError(
            f"model uri {uri!r}: unknown builtin model {name!r}; known: {sorted(BUILTIN_MODELS)}"
        )
    return replace(BUILTIN_MODELS[name], max_positions=max_model_len)


def resolve_served_model(
    model: ServedModel, index: int
) -> ModelConfig | CheckpointModel | VllmModel:
    """What the replicas of ``model``, ``spec.models[index]``, build, by engine and URI.

    Raises ``ValueError`` naming ``spec.models[index]`` for a URI that cannot be served.
    """
    source = f"spec.models[{index}]"
    adapters = tuple(
        AdapterSource(adapter.name, adapter.uri, f"{source}.adapters[{position}].uri")
        for position, adapter in enumerate(model.adapters)
    )
    for adapter in adapters:
        parse_artifact_uri(adapter.uri, adapter.field)
    if model.engine is Engine.VLLM:
        return VllmModel(
            model=resolve_vllm_model(model.uri, source),
            source=source,
            max_model_len=model.max_model_len,
            tensor_parallel=model.tensor_parallel,
            adapters=tuple((adapter.name, adapter.uri) for adapter in adapters),
        )
    if model.uri.startswith(BUILTIN_SCHEME):
        if adapters:
            raise ValueError(
                f"{source}.adapters: builtin models take no adapters; serve a checkpoint"
            )
        return resolve_model(model.uri, model.max_model_len)
    parse_artifact_uri(model.uri, f"{source}.uri")
    return CheckpointModel(model.uri, f"{source}.uri", model.max_model_len, adapters)


def resolve_vllm_model(uri: str, source: str) -> str:
    """What vLLM loads for ``uri``: a Hub id (vLLM downloads it), a local directory, or an
    artifact URI the replica materializes first (a pinned Hub revision among them);
    ``source`` names the field in errors."""
    if uri.startswith(BUILTIN_SCHEME):
        raise ValueError(
            f"{source}.uri {uri!r}: builtin models run on the torch engine only; "
            f"set {source}.engine: Torch"
        )
    parsed = parse_artifact_uri(uri, f"{source}.uri")
    if parsed.scheme == "hf" and parsed.revision is None:
        return parsed.name
    if parsed.scheme == "file":
        return parsed.path
    return uri
