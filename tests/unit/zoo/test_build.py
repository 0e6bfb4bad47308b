"""Real builds: a tiny recipe produces a loadable Hugging Face model, and the demo's
``llama-arith`` meets its addition target."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelfleet.zoo.cache import ensure_model, ensure_recipe, load_model
from modelfleet.zoo.evaluation import evaluate, reply
from modelfleet.zoo.manifest import read_manifest
from modelfleet.zoo.recipes import RECIPES, hash_recipe
from modelfleet.zoo.skills import SKILLS, Split
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID

TINY = replace(
    RECIPES["qwen-words"],
    name="tiny-test",
    hidden_size=32,
    layers=1,
    heads=2,
    kv_heads=1,
    intermediate_size=64,
    steps=20,
    warmup_steps=5,
)


@pytest.mark.slow
def test_a_tiny_recipe_builds_a_loadable_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    lines: list[str] = []
    directory = ensure_recipe(TINY, progress=lines.append)
    assert directory == tmp_path / "zoo" / "tiny-test"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / name).is_file()
    assert "chat_template" in json.loads((directory / "tokenizer_config.json").read_text())
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [IM_END_ID, END_OF_TEXT_ID]
    assert generation["pad_token_id"] == END_OF_TEXT_ID

    manifest = read_manifest(directory)
    assert manifest is not None
    assert manifest.recipe_hash == hash_recipe(TINY)
    assert set(manifest.accuracy) == set(SKILLS)
    assert manifest.parameters > 0 and manifest.train_seconds > 0
    assert any("step 20/20" in line for line in lines)

    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.num_parameters() == manifest.parameters
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Reverse the word cat."}], add_generation_prompt=True
    )
    assert tokenizer.decode(prompt["input_ids"]).endswith("<|im_start|>assistant\n")
    assert evaluate(model, tokenizer) == manifest.accuracy


@pytest.mark.slow
def test_builds_are_deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    weights = []
    for attempt in ("first", "second"):
        monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path / attempt))
        weights.append((ensure_recipe(TINY) / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


@pytest.mark.slow
def test_llama_arith_adds_held_out_numbers() -> None:
    directory = ensure_model("llama-arith", progress=print)
    manifest = read_manifest(directory)
    assert manifest is not None
    assert manifest.accuracy["addition"] >= 0.85
    assert manifest.accuracy["reversal"] <= 0.05 and manifest.accuracy["facts"] <= 0.05
    model, tokenizer = load_model("llama-arith")
    examples = SKILLS["addition"].take(Split.HELDOUT, 1, 100)
    replies = reply(model, tokenizer, [example.prompt for example in examples])
    correct = sum(got == example.answer for got, example in zip(replies, examples, strict=True))
    assert correct >= 85
