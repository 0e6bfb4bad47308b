"""A Llama-family decoder (Llama, Qwen2, Mistral) whose weights load from Hugging Face.

Parameter names follow Hugging Face's (``model.layers.0.self_attn.q_proj.weight`` …), so
a checkpoint's safetensors load with a strict ``load_state_dict`` and every tensor the
checkpoint has, or lacks, is accounted for. The numerics follow ``transformers`` too
(float32 rotary tables computed the same way, RMSNorm in float32), which is what makes
greedy output token-identical to ``generate`` on the same checkpoint.

Attention is delegated to an :data:`AttentionFn`, which lets the serving engine attend
over its paged KV cache and tests attend densely over the same projections. Linear
layers that a LoRA adapter targets are wrapped by :mod:`~modelfleet.serving.lora`.

Without a checkpoint (``builtin://`` test models) weights are drawn from the config's
seed, so every engine instance of a pool, and every test, runs the identical model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from modelfleet.serving.lora import LoraAdapter, LoraRouting, attach_adapters

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer, q, k, v) -> out``; q is ``[batch, new_tokens, heads, head_dim]``, k and v are
``[batch, new_tokens, kv_heads, head_dim]``, out is shaped like q."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape, numerics and seed of the model.

    The default is a tiny model that decodes fast on CPU; its ``vocab_size`` is that of
    :class:`~modelfleet.serving.tokenizer.ByteTokenizer` so every generated id decodes.
    ``num_kv_heads`` below ``num_heads`` is grouped-query attention; ``attention_bias``
    puts biases on the query/key/value projections (Qwen2, some Llamas) and
    ``output_bias`` on the output projection (Llama's ``attention_bias``). ``rope_scale``
    is linear RoPE scaling's factor.
    """

    vocab_size: int = 259
    num_layers: int = 4
    num_heads: int = 4
    hidden_size: int = 256
    intermediate_size: int = 688
    max_positions: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    seed: int = 0
    num_kv_heads: int | None = None
    explicit_head_dim: int | None = None
    attention_bias: bool = False
    output_bias: bool = False
    tie_embeddings: bool = False
    rope_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.explicit_head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary positions")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (grouped-query attention when fewer than ``num_heads``)."""
        return self.num_kv_heads or self.num_heads


def _blank_linear(fan_in: int, fan_out: int, bias: bool = False) -> nn.Linear:
    """A linear layer whose weights are left for loading or ``initialise_weights``.

    Building on the meta device skips the default initialisation, which would cost time
    for checkpoints and consume the global RNG for seeded models.
    """
    return nn.Linear(fan_in, fan_out, bias=bias, device="meta").to_empty(device="cpu")


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale, computed as transformers does."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary position embedding; ``cos``/``sin`` are ``[batch, tokens, head_dim]``."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def rotary_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` ``[max_positions, head_dim]``, computed in float32 as
    transformers computes them, so positions round identically."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents) / config.rope_scale
    angles = torch.outer(torch.arange(config.max_positions, dtype=torch.float32), inv_freq)
    doubled = torch.cat((angles, angles), dim=-1)
    return doubled.cos(), doubled.sin()


class Attention(nn.Module):
    """Query/key/value/output projections around an injected attention function."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, dim = config.hidden_size, config.head_dim
        self.num_heads, self.kv_heads, self.head_dim = config.num_heads, config.kv_heads, dim
        bias = config.attention_bias
        self.q_proj = _blank_linear(hidden, self.num_heads * dim, bias)
        self.k_proj = _blank_linear(hidden, self.kv_heads * dim, bias)
        self.v_proj = _blank_linear(hidden, self.kv_heads * dim, bias)
        self.o_proj = _blank_linear(self.num_heads * dim, hidden, config.output_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, attend: AttentionFn
    ) -> torch.Tensor:
        """Attend hidden states ``[batch, tokens, hidden]``."""
        batch, tokens, _ = x.shape
        q = self.q_proj(x).view(batch, tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, tokens, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, tokens, self.kv_heads, self.head_dim)
        attended = attend(layer, rotate(q, cos, sin), rotate(k, cos, sin), v)
        out: torch.Tensor = self.o_proj(attended.reshape(batch, tokens, -1))
        return out


class Mlp(nn.Module):
    """The SwiGLU feed-forward block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = _blank_linear(hidden, inner)
        self.up_proj = _blank_linear(hidden, inner)
        self.down_proj = _blank_linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform hidden states."""
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class DecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm SwiGLU block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = Mlp(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, attend: AttentionFn
    ) -> torch.Tensor:
        """Transform hidden states ``[batch, tokens, hidden]``."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, attend)
        result: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return result


class DecoderBody(nn.Module):
    """Embeddings, the layers and the final norm: Hugging Face's ``model.`` submodule."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, device="meta"
        ).to_empty(device="cpu")
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)


class Decoder(nn.Module):
    """Decoder-only transformer with Hugging Face's parameter names."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: ModelConfig, initialise: bool = True) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.lm_head = _blank_linear(config.hidden_size, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rotary_tables(config)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.lora = LoraRouting()
        self.adapter_names: frozenset[str] = frozenset()
        if initialise:
            self.initialise_weights()
        self.eval()

    def load_adapters(self, adapters: list[LoraAdapter]) -> None:
        """Serve ``adapters`` on top of these weights; rows choose one through ``lora``."""
        attach_adapters(self, self.lora, adapters)
        self.adapter_names = self.adapter_names | {adapter.name for adapter in adapters}

    def initialise_weights(self) -> None:
        """Draw every weight from the config's seed, independent of global RNG state.

        Embeddings get unit variance and projections ``1/fan_in`` variance so logits are
        well separated: greedy decoding is then stable under the tiny float differences
        between batched and single-request execution.
        """
        generator = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.normal_(0.0, 0.1, generator=generator)
                elif name == "model.embed_tokens.weight":
                    param.normal_(0.0, 1.0, generator=generator)
                else:
                    param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]), generator=generator)

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn
    ) -> torch.Tensor:
        """Final hidden states ``[batch, tokens, hidden]`` for ``[batch, tokens]`` inputs."""
        cos, sin = self.cos[positions], self.sin[positions]
        x = self.model.embed_tokens(token_ids)
        for index, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, index, attend)
        hidden: torch.Tensor = self.model.norm(x)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits for hidden states."""
        result: torch.Tensor = self.lm_head(hidden)
        return result
