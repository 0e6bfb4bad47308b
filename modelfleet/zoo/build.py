"""Build one zoo model into a directory: tokenizer, training, evaluation, artifacts.

The directory is a plain Hugging Face model, so anything that loads models by path
(``from_pretrained``, vLLM, the serving catalog) takes it unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import GenerationConfig

from modelfleet.zoo.evaluation import EVAL_EXAMPLES, evaluate
from modelfleet.zoo.manifest import Manifest, write_manifest
from modelfleet.zoo.recipes import Recipe, hash_recipe
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID, train_tokenizer
from modelfleet.zoo.training import Progress, train


def _report(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


def build(recipe: Recipe, directory: Path, progress: Progress | None = None) -> Manifest:
    """Train, evaluate and save ``recipe``'s model into the existing ``directory``."""
    started = time.monotonic()
    _report(progress, f"{recipe.name}: training tokenizer {recipe.tokenizer.name}")
    tokenizer = train_tokenizer(recipe.tokenizer)
    model = train(recipe, tokenizer, progress)
    train_seconds = time.monotonic() - started
    _report(progress, f"{recipe.name}: evaluating {EVAL_EXAMPLES} held-out questions per skill")
    accuracy = evaluate(model, tokenizer)
    model.generation_config = GenerationConfig.from_dict(
        {
            "bos_token_id": END_OF_TEXT_ID,
            "eos_token_id": [IM_END_ID, END_OF_TEXT_ID],
            "pad_token_id": END_OF_TEXT_ID,
            "do_sample": False,
        }
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    manifest = Manifest(
        name=recipe.name,
        recipe_hash=hash_recipe(recipe),
        architecture=recipe.architecture.value,
        tokenizer=recipe.tokenizer.name,
        vocab_size=len(tokenizer),
        skills=tuple(recipe.skills),
        seed=recipe.seed,
        parameters=model.num_parameters(),
        train_seconds=round(train_seconds, 1),
        accuracy=accuracy,
        eval_examples=EVAL_EXAMPLES,
    )
    write_manifest(directory, manifest)
    scores = ", ".join(f"{skill} {score:.0%}" for skill, score in accuracy.items())
    _report(progress, f"{recipe.name}: trained in {train_seconds:.0f}s; held-out accuracy {scores}")
    return manifest
