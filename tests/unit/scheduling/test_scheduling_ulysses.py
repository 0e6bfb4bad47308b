"""Ulysses attention over two gloo processes equals single-process attention, values and grads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modelfleet.scheduling.ulysses import ulysses_attention

WORLD = 2
SHAPE = (2, 16, 4, 8)  # batch, sequence, heads, head_dim


def full_inputs() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(SHAPE, generator=generator, dtype=torch.float64) for _ in range(4)]


def reference() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Single-process causal attention and the gradients of a weighted sum of its output."""
    q, k, v, weight = full_inputs()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = F.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in leaves), is_causal=True
    ).transpose(1, 2)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves if x.grad is not None]


def run_rank(rank: int, port: int, results: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        chunk = SHAPE[1] // WORLD
        q, k, v, weight = (x[:, rank * chunk : (rank + 1) * chunk] for x in full_inputs())
        q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
        out = ulysses_attention(q, k, v)
        (out * weight).sum().backward()
        torch.save(
            {"out": out.detach(), "grads": [x.grad for x in (q, k, v)]}, results / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_process_ulysses_matches_single_process_attention(tmp_path: Path) -> None:
    mp.spawn(run_rank, args=(free_port(), tmp_path), nprocs=WORLD, join=True)

    expected_out, expected_grads = reference()
    chunk = SHAPE[1] // WORLD
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        piece = slice(rank * chunk, (rank + 1) * chunk)
        torch.testing.assert_close(got["out"], expected_out[:, piece], rtol=0, atol=1e-5)
        for grad, expected in zip(got["grads"], expected_grads, strict=True):
            torch.testing.assert_close(grad, expected[:, piece], rtol=0, atol=1e-5)
