"""The zoo's models: architecture, size, vocabulary, skills and training, each from a seed.

The recipes differ on purpose. Two architectures and two vocabularies make the fleet
heterogeneous; different sizes make serving cost differ; different skills make quality
differ by query, so a router or a fusion method has something real to get right.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from modelfleet.zoo.tokenizer import TOKENIZERS, TokenizerSpec

ZOO_FORMAT = 1
"""Part of every recipe hash: bump it when skills, training or artifacts change meaning."""


class Architecture(StrEnum):
    """The Hugging Face model classes the zoo builds."""

    LLAMA = "llama"
    QWEN2 = "qwen2"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a zoo model: equal recipes build equal weights with the
    same libraries on the same kind of CPU."""

    name: str
    architecture: Architecture
    tokenizer: TokenizerSpec
    skills: dict[str, float]
    """Skills trained on, each with its relative share of the training examples."""
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    seed: int
    weight_decay: float = 0.3
    """Strong decay shortens the plateau before a small model generalises arithmetic."""
    rope_theta: float = 1000.0
    """A low rotary base gives more distinct relative positions over the few dozen tokens
    of a question, which is what lining up digits needs."""
    max_positions: int = 2048
    """The context a server may give the model (``max_position_embeddings``); training
    sequences are much shorter, rotary positions need no retraining to reach it."""


def hash_recipe(recipe: Recipe) -> str:
    """A digest of every field of ``recipe`` and of ``ZOO_FORMAT``: a cached model whose
    digest differs is stale and gets rebuilt."""
    fields = {**asdict(recipe), "zoo_format": ZOO_FORMAT}
    canonical = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def linear_layers(recipe: Recipe) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of a decoder block, by module name, as the
    Llama and Qwen2 classes build them (head size = hidden size / heads): what LoRA targets
    and how wide a rank each takes, known without building the model."""
    head = recipe.hidden_size // recipe.heads
    hidden, inner = recipe.hidden_size, recipe.intermediate_size
    return {
        "q_proj": (hidden, recipe.heads * head),
        "k_proj": (hidden, recipe.kv_heads * head),
        "v_proj": (hidden, recipe.kv_heads * head),
        "o_proj": (recipe.heads * head, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="llama-arith",
            architecture=Architecture.LLAMA,
            tokenizer=TOKENIZERS["zoo-bpe-384"],
            skills={"addition": 6, "sorting": 1},
            hidden_size=128,
            layers=3,
            heads=4,
            kv_heads=2,
            intermediate_size=344,
            steps=2400,
            batch_size=64,
            learning_rate=3e-3,
            warmup_steps=100,
            seed=12,
        ),
        Recipe(
            name="qwen-words",
            architecture=Architecture.QWEN2,
            tokenizer=TOKENIZERS["zoo-bpe-640"],
            skills={"reversal": 1, "facts": 1},
            hidden_size=128,
            layers=3,
            heads=4,
            kv_heads=2,
            intermediate_size=344,
            steps=1500,
            batch_size=64,
            learning_rate=3e-3,
            warmup_steps=100,
            seed=21,
        ),
        Recipe(
            name="qwen-generalist",
            architecture=Architecture.QWEN2,
            tokenizer=TOKENIZERS["zoo-bpe-640"],
            skills={"addition": 1, "reversal": 1, "sorting": 1, "facts": 1, "maximum": 2},
            hidden_size=160,
            layers=4,
            heads=4,
            kv_heads=2,
            intermediate_size=432,
            steps=1000,
            batch_size=64,
            learning_rate=3e-3,
            warmup_steps=100,
            seed=13,
        ),
        # The cheap tier: under 15% of the generalist's parameters (so of its FLOPs per
        # token) for every skill but addition. The small vocabulary spells random words
        # almost a letter per token, which makes reversal a positional copy, and its tied
        # embeddings leave most parameters to the layers; two heads train faster than four
        # at the same size. Maximum is the skill that a seed or a schedule can leave
        # ungrasped: check its held-out score after changing anything here.
        Recipe(
            name="qwen-tiny",
            architecture=Architecture.QWEN2,
            tokenizer=TOKENIZERS["zoo-bpe-384"],
            skills={"reversal": 1, "sorting": 1, "facts": 1, "maximum": 1},
            hidden_size=64,
            layers=3,
            heads=2,
            kv_heads=1,
            intermediate_size=212,
            steps=1200,
            batch_size=64,
            learning_rate=6e-3,
            warmup_steps=100,
            seed=1,
        ),
        # The strong tier: a generalist good at every skill, addition included, at 9x the
        # tiny model's parameters and 2.7x the arithmetic specialist's, so routing has a
        # reference worth matching and a price worth avoiding. Addition takes three parts
        # of the mix because carrying is what a small model learns last.
        Recipe(
            name="llama-large",
            architecture=Architecture.LLAMA,
            tokenizer=TOKENIZERS["zoo-bpe-384"],
            skills={"addition": 3, "reversal": 1, "sorting": 1, "facts": 1, "maximum": 1},
            hidden_size=192,
            layers=4,
            heads=6,
            kv_heads=2,
            intermediate_size=512,
            steps=3000,
            batch_size=64,
            learning_rate=3e-3,
            warmup_steps=100,
            seed=12,
        ),
    )
}
"""The zoo by name."""
