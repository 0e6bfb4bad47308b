"""Ulysses-style sequence-parallel attention over ``torch.distributed``.

Each rank of an SP group holds a contiguous slice of the sequence. Attention needs the
whole sequence, so before it an all-to-all trades sequence slices for head slices (every
rank then holds the full sequence for heads/P heads), attention runs locally, and a second
all-to-all trades back. The two exchanges are each other's inverse, which is also how their
gradients flow. This is the communication pattern ``costmodel.time_ulysses`` prices, and
it runs on any backend with all-to-all (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention of the local sequence slice ``[batch, seq/P, heads, head_dim]``.

    Rank r must hold positions ``[r*seq/P, (r+1)*seq/P)``; heads must divide by P.
    Returns this rank's slice of the output, same shape as ``q``.
    """
    size = dist.get_world_size(group)
    if q.shape[2] % size:
        raise ValueError(f"{q.shape[2]} heads do not split over {size} ranks")
    q, k, v = (_differentiable(_SequenceToHeads, x, group) for x in (q, k, v))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    ).transpose(1, 2)
    return _differentiable(_HeadsToSequence, out, group)


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[b, s/P, h, d]`` (a sequence slice) to ``[b, s, h/P, d]`` (a head slice)."""
    size = dist.get_world_size(group)
    b, s_local, h, d = x.shape
    chunks = x.reshape(b, s_local, size, h // size, d).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 0, 2, 3, 4).reshape(b, size * s_local, h // size, d)


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``[b, s, h/P, d]`` (a head slice) back to ``[b, s/P, h, d]`` (a sequence slice)."""
    size = dist.get_world_size(group)
    b, s, h_local, d = x.shape
    chunks = x.reshape(b, size, s // size, h_local, d).permute(1, 0, 2, 3, 4).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    return received.permute(1, 2, 0, 3, 4).reshape(b, s // size, size * h_local, d)


def _differentiable(
    function: type[torch.autograd.Function], x: torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor:
    apply: Callable[[torch.Tensor, dist.ProcessGroup | None], torch.Tensor] = function.apply
    return apply(x, group)


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return heads_to_sequence(grad, ctx.group), None


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return sequence_to_heads(grad, ctx.group), None
