"""Recipes: two architectures on two vocabularies, of different sizes and skills."""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from modelfleet.zoo.models import configure_model
from modelfleet.zoo.recipes import RECIPES, Architecture, hash_recipe, linear_layers
from modelfleet.zoo.skills import SKILLS
from modelfleet.zoo.tokenizer import IM_END_ID


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        model: torch.nn.Module = AutoModelForCausalLM.from_config(configure_model(RECIPES[name]))
    return model


def test_llama_arith_is_a_llama_with_grouped_query_attention_and_untied_embeddings() -> None:
    config = configure_model(RECIPES["llama-arith"])
    assert isinstance(config, LlamaConfig)
    assert config.num_key_value_heads < config.num_attention_heads
    assert not config.tie_word_embeddings
    model = _meta_model("llama-arith")
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight


def test_qwen_recipes_have_attention_biases_and_tied_embeddings() -> None:
    for name in ("qwen-words", "qwen-generalist"):
        config = configure_model(RECIPES[name])
        assert isinstance(config, Qwen2Config)
        assert config.tie_word_embeddings
        model = _meta_model(name)
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert any(n.endswith("q_proj.bias") for n, _ in model.named_parameters())


def test_the_zoo_is_heterogeneous() -> None:
    recipes = list(RECIPES.values())
    assert {r.architecture for r in recipes} == set(Architecture)
    assert len({r.tokenizer.name for r in recipes}) == 2
    sizes = [sum(p.numel() for p in _meta_model(r.name).parameters()) for r in recipes]
    assert len(set(sizes)) == len(sizes)
    kinds = {(r.architecture, frozenset(r.skills)) for r in recipes}
    assert len(kinds) == len(recipes), "no two recipes share an architecture and skills"
    assert all(set(r.skills) <= set(SKILLS) for r in recipes)
    assert set(RECIPES["qwen-generalist"].skills) == set(SKILLS)


def test_configs_stop_at_im_end() -> None:
    for recipe in RECIPES.values():
        assert configure_model(recipe).eos_token_id == IM_END_ID


def test_recipe_hash_is_stable_and_sees_every_field() -> None:
    recipe = RECIPES["llama-arith"]
    assert hash_recipe(recipe) == hash_recipe(replace(recipe))
    assert hash_recipe(recipe) != hash_recipe(replace(recipe, steps=recipe.steps + 1))
    assert hash_recipe(recipe) != hash_recipe(replace(recipe, skills={"addition": 1}))
    assert hash_recipe(recipe) != hash_recipe(
        replace(recipe, tokenizer=replace(recipe.tokenizer, seed=99))
    )
    assert len({hash_recipe(r) for r in RECIPES.values()}) == len(RECIPES)


def test_linear_layers_are_the_built_models_layers() -> None:
    """The closed form the operator checks LoRA ranks with, against every built model."""
    for name, recipe in RECIPES.items():
        built = {
            module_name.rsplit(".", 1)[-1]: (module.in_features, module.out_features)
            for module_name, module in _meta_model(name).named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in module_name
        }
        assert linear_layers(recipe) == built, name
