"""Small but complete artifact directories, written the way training jobs write them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def write_model_dir(path: Path) -> Path:
    """A Hugging Face model directory with every file the layout check looks for."""
    write_json(path / "config.json", {"model_type": "llama", "hidden_size": 8, "vocab_size": 16})
    path.mkdir(parents=True, exist_ok=True)
    weights = {"embed.weight": torch.arange(32, dtype=torch.float32).reshape(16, 2)}
    save_file(weights, str(path / "model.safetensors"))
    write_json(path / "tokenizer.json", {"version": "1.0", "model": {"type": "BPE", "vocab": {}}})
    write_json(
        path / "tokenizer_config.json",
        {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
    )
    write_json(path / "generation_config.json", {"eos_token_id": 2})
    write_json(path / "original" / "params.json", {"dim": 8})
    return path


def write_adapter_dir(path: Path) -> Path:
    """A PEFT LoRA adapter directory."""
    write_json(
        path / "adapter_config.json",
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]},
    )
    save_file({"lora_A.weight": torch.ones(2, 8)}, str(path / "adapter_model.safetensors"))
    return path
