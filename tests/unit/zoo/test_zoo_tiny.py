"""The cheap tier of the zoo: a model a router can send easy requests to for a fraction
of the generalist's cost."""

from __future__ import annotations

import torch
from transformers import Qwen2Config

from modelfleet.zoo.models import configure_model, create_model
from modelfleet.zoo.recipes import RECIPES

TINY_COST_SHARE = 0.15
"""At most this share of the generalist's parameters, hence of its forward FLOPs per token."""


def _parameters(name: str) -> int:
    with torch.device("meta"):
        return create_model(RECIPES[name]).num_parameters()


def test_qwen_tiny_costs_at_most_a_fraction_of_the_generalist() -> None:
    assert _parameters("qwen-tiny") <= TINY_COST_SHARE * _parameters("qwen-generalist")


def test_qwen_tiny_is_a_qwen2_with_tied_embeddings() -> None:
    config = configure_model(RECIPES["qwen-tiny"])
    assert isinstance(config, Qwen2Config)
    assert config.tie_word_embeddings
