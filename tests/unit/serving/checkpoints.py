"""Small random Hugging Face checkpoints of each supported architecture, for tests.

``initializer_range`` is raised from transformers' 0.02 so that logits are well
separated: greedy decoding then does not hinge on float rounding, and a token-identical
comparison with ``generate`` tests the computation rather than tie-breaking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

SHAPE: dict[str, Any] = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 512,
    "initializer_range": 0.3,
    "eos_token_id": 96,
    "bos_token_id": 95,
}

ARCHITECTURES: dict[str, Any] = {
    "llama-gqa": lambda: LlamaConfig(**SHAPE, num_key_value_heads=2, rope_theta=500000.0),
    "llama-bias-linear-rope": lambda: LlamaConfig(
        **SHAPE,
        num_key_value_heads=4,
        attention_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "qwen2-tied": lambda: Qwen2Config(**SHAPE, num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": lambda: MistralConfig(**SHAPE, num_key_value_heads=1, sliding_window=512),
}


def save_random_checkpoint(name: str, directory: Path, seed: int = 0) -> Any:
    """A random model of architecture ``name`` saved to ``directory``; returns it."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[name]())
    model.eval()
    model.save_pretrained(directory)
    return model


def save_adapter(base: Any, directory: Path, seed: int, targets: list[str]) -> Any:
    """A PEFT LoRA adapter with random (non-zero) B, saved; returns the PEFT model."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(directory)
    return peft_model
