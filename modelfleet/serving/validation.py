"""Checks of request input shared by every path that creates or resumes a request.

They raise ``ValueError`` naming the offending parameter, so a replica can hand the
message straight back to the client as a 400 instead of failing deep inside a step.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.model import ModelConfig


def check_tokens(
    config: ModelConfig, prompt: Sequence[int], output: Sequence[int], params: SamplingParams
) -> None:
    """Reject empty or out-of-vocabulary prompts and sequences with no room to generate."""
    if not prompt:
        raise ValueError("prompt_token_ids must not be empty")
    for name, tokens in (("prompt_token_ids", prompt), ("output_token_ids", output)):
        if any(not 0 <= token < config.vocab_size for token in tokens):
            raise ValueError(f"{name} must lie in [0, {config.vocab_size})")
    if len(prompt) + len(output) >= config.max_positions:
        raise ValueError(
            f"prompt_token_ids has {len(prompt) + len(output)} tokens (with output so far); "
            f"max_positions {config.max_positions} leaves no room to generate"
        )
    if len(output) >= params.max_tokens:
        raise ValueError(f"output_token_ids already holds max_tokens={params.max_tokens} tokens")


def check_from_block(from_block: int) -> None:
    """Reject a negative block index for a staged export."""
    if from_block < 0:
        raise ValueError(f"from_block must be >= 0, got {from_block}")
