"""The zoo's models as Hugging Face classes: a recipe's config and freshly built model.

Kept apart from :mod:`modelfleet.zoo.recipes` (plain data) so that what only needs to know
a recipe, such as the operator checking a FedJob on a cluster, imports no transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from modelfleet.zoo.recipes import Architecture, Recipe
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID


def configure_model(recipe: Recipe) -> LlamaConfig | Qwen2Config:
    """The Hugging Face config of ``recipe``'s model over its tokenizer's vocabulary.

    Llama gets grouped-query attention and separate input/output embeddings; Qwen2 gets its
    attention biases and tied embeddings, as the released models of each family do.
    """
    common: dict[str, Any] = {
        "vocab_size": recipe.tokenizer.vocab_size,
        "hidden_size": recipe.hidden_size,
        "num_hidden_layers": recipe.layers,
        "num_attention_heads": recipe.heads,
        "num_key_value_heads": recipe.kv_heads,
        "intermediate_size": recipe.intermediate_size,
        "max_position_embeddings": recipe.max_positions,
        "rope_parameters": {"rope_type": "default", "rope_theta": recipe.rope_theta},
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": END_OF_TEXT_ID,
    }
    if recipe.architecture is Architecture.LLAMA:
        return LlamaConfig(**common, tie_word_embeddings=False)
    return Qwen2Config(**common, tie_word_embeddings=True)


CausalLM = LlamaForCausalLM | Qwen2ForCausalLM
"""The model classes of the zoo."""


def create_model(recipe: Recipe) -> CausalLM:
    """``recipe``'s model with freshly initialised weights, on the current default device."""
    config = configure_model(recipe)
    if isinstance(config, LlamaConfig):
        return LlamaForCausalLM(config)
    return Qwen2ForCausalLM(config)
