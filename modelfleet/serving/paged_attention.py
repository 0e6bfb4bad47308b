"""Attention of a batch of requests over their paged KV cache.

Each request appends its new tokens' keys and values to its blocks and attends to
everything cached so far. With grouped-query attention the cache holds only the key/value
heads, and each one serves its group of query heads. Block tables are padded to a common
length so the whole batch runs as one masked attention call: that is what makes
continuous batching pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from modelfleet.serving.kvcache import KVPool


class PagedAttention:
    """The :data:`~modelfleet.serving.model.AttentionFn` for one forward pass.

    ``positions[b, s]`` is the position of new token ``s`` of request ``b``; every request
    in a batch appends the same number of tokens. A key is visible to a query when its
    position is not later than the query's, which also hides the unused tail of the last
    block and the padding of shorter block tables.
    """

    def __init__(
        self, pool: KVPool, block_tables: Sequence[Sequence[int]], positions: torch.Tensor
    ) -> None:
        self.pool = pool
        width = max(len(table) for table in block_tables)
        self.block_tables = torch.tensor(
            [[*table, *[table[0]] * (width - len(table))] for table in block_tables],
            dtype=torch.long,
        )
        block_size = pool.block_size
        self.slots = (
            torch.gather(self.block_tables, 1, positions // block_size) * block_size
            + positions % block_size
        ).flatten()
        key_positions = torch.arange(width * block_size)
        self.mask = (key_positions[None, None, :] <= positions[:, :, None]).unsqueeze(1)

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Cache ``k``/``v`` of the new tokens, then attend ``q`` over the whole cache."""
        heads, dim = k.shape[2], k.shape[3]
        self.pool.write(layer, self.slots, k.reshape(-1, heads, dim), v.reshape(-1, heads, dim))
        keys, values = self.pool.gather(layer, self.block_tables)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=self.mask,
            enable_gqa=q.shape[2] != heads,
        )
        return out.transpose(1, 2)
