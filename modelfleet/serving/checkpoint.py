"""Load a Hugging Face Llama/Qwen2/Mistral checkpoint directory into a :class:`Decoder`.

The config is translated field by field and anything the decoder does not implement
(another architecture, activation, RoPE scaling type, a sliding window shorter than the
served context) is refused with a ``ValueError`` naming the config field, instead of
serving a model that silently computes something else. Weights load with a strict
``load_state_dict``, so a checkpoint with missing or unexpected tensors is refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from modelfleet.serving.model import Decoder, ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name}: cannot be read as JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: must hold a JSON object")
    return data


def rope_settings(hf: dict[str, Any]) -> tuple[float, float]:
    """``(rope_theta, linear scale)`` from either config layout (``rope_parameters`` as
    transformers 5 writes it, or ``rope_theta`` + ``rope_scaling``)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return float(theta), 1.0
    if kind == "linear":
        return float(theta), float(params["factor"])
    raise ValueError(
        f"config.json: rope_type {kind!r} is not supported by the torch engine "
        "(default and linear are); serve this model with engine: VLLM"
    )


def config_from_hf(hf: dict[str, Any], max_model_len: int) -> ModelConfig:
    """The decoder config of a Hugging Face ``config.json``, serving ``max_model_len``."""
    arch = hf.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"config.json: model_type {arch!r} is not supported by the torch engine; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (silu is)")
    if hf.get("mlp_bias"):
        raise ValueError("config.json: mlp_bias is not supported by the torch engine")
    window = hf.get("sliding_window")
    windowed = arch == "mistral" or hf.get("use_sliding_window")
    if windowed and window is not None and window < max_model_len:
        raise ValueError(
            f"maxModelLen {max_model_len} exceeds the model's sliding_window {window}, "
            "which the torch engine does not implement; lower maxModelLen to at most "
            f"{window}"
        )
    limit = int(hf.get("max_position_embeddings", max_model_len))
    if max_model_len > limit:
        raise ValueError(
            f"maxModelLen {max_model_len} exceeds the model's max_position_embeddings "
            f"{limit}; lower maxModelLen"
        )
    theta, scale = rope_settings(hf)
    llama_bias = bool(hf.get("attention_bias"))
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        explicit_head_dim=hf.get("head_dim"),
        max_positions=max_model_len,
        rope_theta=theta,
        rope_scale=scale,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attention_bias=arch == "qwen2" or llama_bias,
        output_bias=arch == "llama" and llama_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files, in float32."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return {name: tensor.float() for name, tensor in state.items()}


def load_decoder(directory: Path, max_model_len: int) -> Decoder:
    """The checkpoint in ``directory`` as a decoder serving ``max_model_len`` tokens.

    Raises ``ValueError`` naming what does not fit: an unsupported config field, or the
    tensors the decoder expected but the checkpoint lacks (or the reverse).
    """
    config = config_from_hf(read_json(directory / "config.json"), max_model_len)
    decoder = Decoder(config, initialise=False)
    state = load_weights(directory)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    result = decoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{directory}: weights do not match a {config.num_layers}-layer decoder: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return decoder


def generation_eos_ids(directory: Path) -> list[int]:
    """``generation_config.json``'s ``eos_token_id`` (an id or a list), as ``generate``
    stops on it; none when the file or the key is absent."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return []
    eos = read_json(path).get("eos_token_id")
    if eos is None:
        return []
    return [int(token) for token in eos] if isinstance(eos, list) else [int(eos)]
