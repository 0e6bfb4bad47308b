"""A small decoder-only transformer built from a config with seeded weights.

Nothing is downloaded: the same ``ModelConfig`` (including its seed) always yields the same
weights, so every engine instance of a pool, and every test, runs the identical model.
Attention is delegated to an :data:`AttentionFn`, which lets the serving engine attend over
its paged KV cache and tests attend densely over the same projections.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(layer, q, k, v) -> out``; tensors are ``[batch, new_tokens, heads, head_dim]``."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and seed of the model; the default is a tiny model that decodes fast on CPU.

    The default ``vocab_size`` is that of :class:`~modelfleet.serving.tokenizer.ByteTokenizer`
    so every generated id decodes to text.
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

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


def _blank_linear(fan_in: int, fan_out: int) -> nn.Linear:
    """A bias-free linear layer whose weights are left for ``initialise_weights`` to draw.

    Building on the meta device skips the default initialisation, which would consume the
    global RNG and make the model depend on unrelated code that ran before.
    """
    return nn.Linear(fan_in, fan_out, bias=False, device="meta").to_empty(device="cpu")


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary position embedding; ``cos``/``sin`` are ``[batch, tokens, head_dim/2]``."""
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class DecoderLayer(nn.Module):
    """Pre-norm attention block followed by a SwiGLU MLP block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.num_heads = config.num_heads
        self.attn_norm = RMSNorm(hidden, config.norm_eps)
        self.qkv = _blank_linear(hidden, 3 * hidden)
        self.out = _blank_linear(hidden, hidden)
        self.mlp_norm = RMSNorm(hidden, config.norm_eps)
        self.gate_up = _blank_linear(hidden, 2 * inner)
        self.down = _blank_linear(inner, hidden)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        attend: AttentionFn,
    ) -> torch.Tensor:
        """Transform hidden states ``[batch, tokens, hidden]``."""
        batch, tokens, hidden = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .view(batch, tokens, 3, self.num_heads, hidden // self.num_heads)
            .unbind(2)
        )
        attended = attend(layer, rotate(q, cos, sin), rotate(k, cos, sin), v)
        x = x + self.out(attended.reshape(batch, tokens, hidden))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        result: torch.Tensor = x + self.down(F.silu(gate) * up)
        return result


class TinyDecoder(nn.Module):
    """Decoder-only transformer: embeddings, RMSNorm, rotary positions, SwiGLU MLPs."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, device="meta").to_empty(
            device="cpu"
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = _blank_linear(config.hidden_size, config.vocab_size)
        inv_freq = 1.0 / config.rope_theta ** (
            torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim
        )
        angles = torch.outer(torch.arange(config.max_positions, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.initialise_weights()
        self.eval()

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
                elif name == "embed.weight":
                    param.normal_(0.0, 1.0, generator=generator)
                else:
                    param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]), generator=generator)

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, attend: AttentionFn
    ) -> torch.Tensor:
        """Final hidden states ``[batch, tokens, hidden]`` for ``[batch, tokens]`` inputs."""
        cos, sin = self.cos[positions], self.sin[positions]
        x = self.embed(token_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, index, attend)
        hidden: torch.Tensor = self.norm(x)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits for hidden states."""
        result: torch.Tensor = self.lm_head(hidden)
        return result
