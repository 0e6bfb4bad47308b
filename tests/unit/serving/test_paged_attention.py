"""Paged attention computes exactly what dense causal attention computes."""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F

from modelfleet.serving.kvcache import KVPool
from modelfleet.serving.model import Decoder, ModelConfig
from modelfleet.serving.paged_attention import PagedAttention

from .conftest import SMALL, prompt

BLOCK = 8


def dense_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: causal attention over the whole sequence, no cache."""
    del layer
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )
    return out.transpose(1, 2)


def dense_logits(model: Decoder, tokens: list[int]) -> torch.Tensor:
    positions = torch.arange(len(tokens)).unsqueeze(0)
    return model.logits(model(torch.tensor([tokens]), positions, dense_attention))[0]


def new_pool(config: ModelConfig, num_blocks: int = 32) -> KVPool:
    return KVPool(config.num_layers, num_blocks, BLOCK, config.num_heads, config.head_dim)


def paged_logits(
    model: Decoder, pool: KVPool, table: list[int], tokens: list[int], prefill: int, chunk: int
) -> torch.Tensor:
    """Logits of every position: chunked prefill of ``prefill`` tokens, then 1-token decodes."""
    rows = []
    bounds = [*range(0, prefill, chunk), *range(prefill, len(tokens) + 1)]
    for start, end in itertools.pairwise(bounds):
        positions = torch.arange(start, end).unsqueeze(0)
        attend = PagedAttention(pool, [table[: -(-end // BLOCK)]], positions)
        rows.append(model.logits(model(torch.tensor([tokens[start:end]]), positions, attend))[0])
    return torch.cat(rows)


def test_prefill_and_decode_match_dense_attention(model: Decoder) -> None:
    tokens = prompt(45)
    table = [9, 3, 17, 0, 25, 11]
    with torch.inference_mode():
        expected = dense_logits(model, tokens)
        for chunk in (30, 7):
            got = paged_logits(model, new_pool(SMALL), table, tokens, prefill=30, chunk=chunk)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_default_tiny_model_matches_dense_attention() -> None:
    config = ModelConfig()
    model = Decoder(config)
    tokens = prompt(40, salt=3)
    with torch.inference_mode():
        got = paged_logits(model, new_pool(config), [4, 1, 7, 2, 5], tokens, prefill=33, chunk=33)
        torch.testing.assert_close(got, dense_logits(model, tokens), atol=1e-5, rtol=1e-5)


def test_batched_decode_with_padded_tables_matches_dense(model: Decoder) -> None:
    """Requests of different lengths share one decode forward without seeing each other."""
    pool = new_pool(SMALL)
    sequences = {
        "a": (prompt(20, 1), [5, 2, 30]),
        "b": (prompt(3, 2), [8]),
        "c": (prompt(31, 3), [1, 12, 14, 6]),
    }
    with torch.inference_mode():
        for tokens, table in sequences.values():
            positions = torch.arange(len(tokens) - 1).unsqueeze(0)
            model(torch.tensor([tokens[:-1]]), positions, PagedAttention(pool, [table], positions))
        positions = torch.tensor([[len(tokens) - 1] for tokens, _ in sequences.values()])
        attend = PagedAttention(pool, [table for _, table in sequences.values()], positions)
        last = torch.tensor([[tokens[-1]] for tokens, _ in sequences.values()])
        batched = model.logits(model(last, positions, attend))[:, 0]
        for row, (tokens, _) in zip(batched, sequences.values(), strict=True):
            torch.testing.assert_close(row, dense_logits(model, tokens)[-1], atol=1e-5, rtol=1e-5)


def test_model_weights_depend_only_on_seed() -> None:
    torch.manual_seed(123)
    first = Decoder(SMALL).state_dict()
    torch.manual_seed(456)
    second = Decoder(SMALL).state_dict()
    other = Decoder(ModelConfig(**{**SMALL.__dict__, "seed": 1})).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
