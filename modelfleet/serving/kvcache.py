"""Paged KV cache: a preallocated pool of fixed-size blocks and their accounting.

Requests own lists of block ids (block tables) instead of contiguous buffers, so memory
is never fragmented, a request grows one block at a time, and migration can copy a
request's KV block by block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class OutOfBlocksError(RuntimeError):
    """Raised when an allocation asks for more blocks than are free."""


class BlockAllocator:
    """Hands out block ids from a fixed pool and refuses double frees."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        """Blocks available for allocation."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks owned by some request."""
        return len(self._used)

    @property
    def used_blocks(self) -> frozenset[int]:
        """Ids of the blocks owned by some request."""
        return frozenset(self._used)

    def allocate(self, count: int) -> list[int]:
        """Take ``count`` free blocks, or raise :class:`OutOfBlocksError` taking none."""
        if count > len(self._free):
            raise OutOfBlocksError(f"need {count} blocks, {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(count)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        """Return blocks to the pool; freeing a block that is not in use is a bug."""
        unknown = [b for b in blocks if b not in self._used]
        if unknown or len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks {list(blocks)} are not all allocated exactly once")
        self._used.difference_update(blocks)
        self._free.extend(reversed(blocks))


class KVPool:
    """The KV tensors of all blocks: ``[layers, 2 (key, value), blocks, block_size, heads, dim]``.

    One preallocated tensor means a block id addresses the same rows in every layer, and
    a token's cache slot is ``block * block_size + offset`` in a flat view of a layer.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.block_size = block_size
        self.tensor = torch.zeros(
            num_layers, 2, num_blocks, block_size, num_heads, head_dim, dtype=dtype
        )

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one block's KV across layers, as exported: ``[layers, 2, -, bs, h, d]``."""
        layers, pair, _, block_size, heads, dim = self.tensor.shape
        return (layers, pair, block_size, heads, dim)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys and values ``[tokens, heads, dim]`` into flat cache ``slots``."""
        _, _, blocks, block_size, heads, dim = self.tensor.shape
        flat = self.tensor[layer].view(2, blocks * block_size, heads, dim)
        flat[0].index_copy_(0, slots, k)
        flat[1].index_copy_(0, slots, v)

    def gather(self, layer: int, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, blocks * block_size, heads, dim]`` of ``block_tables``.

        ``index_select`` over whole flattened blocks is several times faster on CPU than
        advanced indexing with the 2-D table.
        """
        _, _, blocks, block_size, heads, dim = self.tensor.shape
        batch, width = block_tables.shape
        rows = self.tensor[layer].view(2, blocks, block_size * heads * dim)
        kv = rows.index_select(1, block_tables.flatten()).view(
            2, batch, width * block_size, heads, dim
        )
        return kv[0], kv[1]

    def copy_out(self, blocks: Sequence[int]) -> torch.Tensor:
        """A copy of the KV of ``blocks`` in every layer, in block order."""
        return self.tensor[:, :, torch.tensor(list(blocks), dtype=torch.long)].clone()

    def copy_in(self, blocks: Sequence[int], data: torch.Tensor) -> None:
        """Overwrite ``blocks`` with exported KV ``data`` (the layout of :meth:`copy_out`)."""
        self.tensor[:, :, torch.tensor(list(blocks), dtype=torch.long)] = data
