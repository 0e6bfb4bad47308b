"""Token selection: greedy, or temperature/top-p sampling from a counter-based random stream.

The random draw for output token ``i`` of a request comes from a generator seeded with
``(seed, i)`` alone. The sampling state of a request is therefore just its seed and how
many tokens it has produced, which every exported state (even one without KV) carries:
a migrated or recovered request draws exactly the numbers it would have drawn at home,
however the batch around it changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modelfleet.serving.interface import SamplingParams, TokenLogprob

_MASK64 = (1 << 64) - 1


def derive_token_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit generator seed for token ``index`` of a request (splitmix64)."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def sample_token(
    logits: torch.Tensor, params: SamplingParams, index: int, generator: torch.Generator
) -> int:
    """Choose output token ``index`` from ``logits`` ``[vocab]``.

    Sampling consumes exactly one uniform number per token (inverse CDF over the top-p
    nucleus), so the random stream never depends on the shape of the distribution.
    """
    if params.temperature == 0:
        return int(torch.argmax(logits))
    if params.seed is None:
        raise ValueError("params.seed must be set before sampling")
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    nucleus = torch.where(mass_before < params.top_p, sorted_probs, 0.0)
    cdf = torch.cumsum(nucleus, dim=-1)
    generator.manual_seed(derive_token_seed(params.seed, index))
    draw = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    last = int(torch.count_nonzero(nucleus)) - 1
    choice = min(int(torch.searchsorted(cdf, draw, right=True)), last)
    return int(order[choice])


def apply_penalties(
    logits: torch.Tensor, output: Sequence[int], params: SamplingParams
) -> torch.Tensor:
    """``logits`` less OpenAI's repetition penalties for the tokens generated so far:
    ``presence_penalty`` once per distinct token, ``frequency_penalty`` per occurrence."""
    if not params.penalised or not output:
        return logits
    vocab = logits.shape[-1]
    counts = torch.bincount(torch.tensor(output), minlength=vocab)[:vocab].to(logits.dtype)
    return logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)


def token_logprobs(
    logits: torch.Tensor, token_id: int, top: int
) -> tuple[float, tuple[TokenLogprob, ...]]:
    """The log-probability of ``token_id`` under ``logits`` ``[vocab]`` (the model's own
    distribution, before penalties and grammar) and the ``top`` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logprobs, min(top, logprobs.shape[-1])) if top else None
    alternatives = (
        ()
        if best is None
        else tuple(
            TokenLogprob(int(i), float(v)) for v, i in zip(best.values, best.indices, strict=True)
        )
    )
    return float(logprobs[token_id]), alternatives
