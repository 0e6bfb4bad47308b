"""Resolve a ServedModel URI to the model a replica builds.

Nothing can be downloaded here, so ``builtin://<name>`` names a config whose weights are
drawn from its seed: every replica of a pool, and every test, gets the same model.
"""

from __future__ import annotations

from dataclasses import replace

from modelfleet.serving.model import ModelConfig

BUILTIN_MODELS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(),
    "tiny-llama-mini": ModelConfig(num_layers=2, hidden_size=64, intermediate_size=176),
}
"""``tiny-llama`` is the default tiny decoder; ``-mini`` is a smaller one for fast tests."""

BUILTIN_SCHEME = "builtin://"


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
