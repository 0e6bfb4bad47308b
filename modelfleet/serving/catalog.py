"""Resolve a ServedModel URI to the model a replica builds.

The torch engine downloads nothing, so ``builtin://<name>`` names a config whose weights
are drawn from its seed: every replica of a pool, and every test, gets the same model.
The vLLM engine loads what vLLM's ``EngineArgs(model=...)`` takes: ``hf://<org>/<name>``
is a Hugging Face Hub model (downloaded by vLLM, or found in the node's HF cache) and
``file:///<dir>`` a model directory that exists on every GPU node.
"""

from __future__ import annotations

from dataclasses import replace

from modelfleet.api.modelpool import Engine, ServedModel
from modelfleet.serving.model import ModelConfig
from modelfleet.serving.vllm_engine import VllmModel

BUILTIN_MODELS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(),
    "tiny-llama-mini": ModelConfig(num_layers=2, hidden_size=64, intermediate_size=176),
}
"""``tiny-llama`` is the default tiny decoder; ``-mini`` is a smaller one for fast tests."""

BUILTIN_SCHEME = "builtin://"
HF_SCHEME = "hf://"
FILE_SCHEME = "file://"


def resolve_model(uri: str, max_model_len: int) -> ModelConfig:
    """The config of ``uri`` with ``max_positions = max_model_len``.

    Raises ``ValueError`` naming the URI and what is supported, so a bad ModelPool fails
    at deploy time with a message the operator can surface.
    """
    if not uri.startswith(BUILTIN_SCHEME):
        scheme = uri.split("://", 1)[0]
        raise ValueError(
            f"model uri {uri!r}: scheme {scheme!r} is not supported by the torch engine; "
            f"use {BUILTIN_SCHEME}<name> with one of {sorted(BUILTIN_MODELS)}"
        )
    name = uri.removeprefix(BUILTIN_SCHEME)
    if name not in BUILTIN_MODELS:
        raise ValueError(
            f"model uri {uri!r}: unknown builtin model {name!r}; known: {sorted(BUILTIN_MODELS)}"
        )
    return replace(BUILTIN_MODELS[name], max_positions=max_model_len)


def resolve_served_model(model: ServedModel, index: int) -> ModelConfig | VllmModel:
    """What the replicas of ``model``, ``spec.models[index]``, build, by its engine.

    Raises ``ValueError`` for a URI the engine cannot load; errors name
    ``spec.models[index]``.
    """
    if model.engine is Engine.VLLM:
        source = f"spec.models[{index}]"
        return VllmModel(
            model=resolve_vllm_model(model.uri, source),
            source=source,
            max_model_len=model.max_model_len,
            tensor_parallel=model.tensor_parallel,
        )
    return resolve_model(model.uri, model.max_model_len)


def resolve_vllm_model(uri: str, source: str) -> str:
    """The model id or directory vLLM loads for ``uri``; ``source`` names it in errors."""
    if uri.startswith(HF_SCHEME):
        repo = uri.removeprefix(HF_SCHEME)
        if not repo or repo.count("/") > 1 or repo.startswith("/") or repo.endswith("/"):
            raise ValueError(
                f"{source}.uri {uri!r}: a Hugging Face model is hf://<org>/<name> or hf://<name>"
            )
        return repo
    if uri.startswith(FILE_SCHEME):
        path = uri.removeprefix(FILE_SCHEME)
        if not path.startswith("/"):
            raise ValueError(
                f"{source}.uri {uri!r}: a local model needs an absolute path, "
                "e.g. file:///models/llama"
            )
        return path
    if uri.startswith(BUILTIN_SCHEME):
        raise ValueError(
            f"{source}.uri {uri!r}: builtin models run on the torch engine only; "
            f"set {source}.engine: torch"
        )
    scheme = uri.split("://", 1)[0]
    raise ValueError(
        f"{source}.uri {uri!r}: scheme {scheme!r} is not supported by the vLLM engine; use "
        f"{HF_SCHEME}<org>/<name> (Hugging Face Hub) or {FILE_SCHEME}/<dir> (a directory on "
        "the GPU nodes)"
    )
