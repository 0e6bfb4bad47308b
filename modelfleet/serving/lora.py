"""Several LoRA adapters served on one base model, batched together.

A PEFT adapter adds ``scale * B @ A`` to some linear layers. Merging it into the base
would need one model copy per adapter; instead each targeted linear layer is wrapped so
that, in one batched forward, every batch row gets the base output plus the low-rank
update of its own adapter (rows are grouped by adapter, as multi-LoRA servers such as
vLLM's do). A row without an adapter is the base model. The result equals the merged
model's up to float rounding, which a test checks against PEFT's own merge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

PEFT_PREFIX = "base_model.model."
UNSUPPORTED_OPTIONS = ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save")


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter's low-rank factors per targeted module path, and its scale."""

    name: str
    scale: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """``module path -> (A [rank, in], B [out, rank])``."""


@dataclass
class LoraRouting:
    """Which adapter each batch row of the current forward uses.

    The engine sets it before every forward; the wrapped layers read it. ``groups`` maps
    an adapter name to the batch rows that use it.
    """

    groups: dict[str, torch.Tensor] = field(default_factory=dict)

    def route(self, adapters: Sequence[str | None]) -> None:
        """Set the rows of the next forward: ``adapters[row]`` or ``None`` for the base."""
        rows: dict[str, list[int]] = {}
        for row, name in enumerate(adapters):
            if name is not None:
                rows.setdefault(name, []).append(row)
        self.groups = {name: torch.tensor(indices) for name, indices in rows.items()}


class LoraLinear(nn.Module):
    """A base linear layer plus the low-rank updates of the adapters that target it."""

    def __init__(self, base: nn.Linear, routing: LoraRouting) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output, plus each row's adapter update; ``x`` is ``[batch, tokens, in]``."""
        out: torch.Tensor = self.base(x)
        for name, rows in self.routing.groups.items():
            factors = self.factors.get(name)
            if factors is not None:
                a, b, scale = factors
                out[rows] += (x[rows] @ a.T @ b.T) * scale
        return out


def read_adapter(directory: Path, name: str) -> LoraAdapter:
    """The PEFT LoRA adapter in ``directory``, served as ``name``.

    Refuses (``ValueError`` naming the option) what the wrapped layers do not compute:
    DoRA, per-module ranks or alphas, extra trained modules, biases, embedding LoRA.
    """
    config: dict[str, Any] = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {name}: peft_type {config['peft_type']!r} is not LORA")
    for option in UNSUPPORTED_OPTIONS:
        if config.get(option):
            raise ValueError(f"adapter {name}: adapter_config.json {option} is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(f"adapter {name}: adapter_config.json bias must be 'none'")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    tensors = load_file(directory / "adapter_model.safetensors")
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        path, _, kind = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ValueError(f"adapter {name}: tensor {key} is not a LoRA A/B weight")
        a, b = factors.get(path, (torch.empty(0), torch.empty(0)))
        pair = (tensor.float(), b) if kind == "A.weight" else (a, tensor.float())
        factors[path] = pair
    return LoraAdapter(name, scale, factors)


def attach_adapters(
    decoder: nn.Module, routing: LoraRouting, adapters: Sequence[LoraAdapter]
) -> None:
    """Wrap every linear layer an adapter targets and give it the adapters' factors.

    Raises ``ValueError`` when an adapter targets a module the decoder lacks or its
    shapes do not fit the base layer (an adapter trained for another model).
    """
    for adapter in adapters:
        for path, (a, b) in adapter.factors.items():
            layer = _wrapped(decoder, path, routing, adapter.name)
            base = layer.base
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
                raise ValueError(
                    f"adapter {adapter.name}: {path} factors {tuple(a.shape)} x "
                    f"{tuple(b.shape)} do not fit the base layer "
                    f"({base.in_features} -> {base.out_features}); was it trained for "
                    "another model?"
                )
            layer.factors[adapter.name] = (a, b, adapter.scale)


def _wrapped(decoder: nn.Module, path: str, routing: LoraRouting, adapter: str) -> LoraLinear:
    """The :class:`LoraLinear` at ``path``, wrapping the plain linear layer there first."""
    parent_path, _, attribute = path.rpartition(".")
    try:
        parent = decoder.get_submodule(parent_path)
        layer = getattr(parent, attribute)
    except AttributeError as error:
        raise ValueError(f"adapter {adapter}: the model has no module {path}") from error
    if isinstance(layer, LoraLinear):
        return layer
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"adapter {adapter}: {path} is not a linear layer")
    wrapped = LoraLinear(layer, routing)
    setattr(parent, attribute, wrapped)
    return wrapped
