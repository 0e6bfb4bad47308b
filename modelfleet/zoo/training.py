"""Supervised fine-tuning from scratch on skill examples, on CPU, deterministically.

Only the reply is learned: prompt tokens are masked out of the loss, so capacity goes to
answering rather than to predicting questions, and the ``<|im_end|>`` after each reply
teaches the model to stop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from modelfleet.zoo.models import CausalLM, create_model
from modelfleet.zoo.recipes import Recipe
from modelfleet.zoo.skills import SKILLS, Example, Split
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID

Progress = Callable[[str], None]
"""Receives one human-readable line per reported event."""

IGNORE = -100
"""The label that excludes a position from the cross-entropy loss."""

TRAIN_THREADS = 2
"""CPU threads for training: the zoo is sized to train in minutes on two cores."""

REPORT_EVERY = 100
"""Training steps between progress lines."""


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids and their labels; padding needs no attention mask because
    causal attention never lets a position see the padding that follows it."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as a user turn followed by the assistant's opening."""
    texts = tokenizer.apply_chat_template(
        [[{"role": "user", "content": prompt}] for prompt in prompts],
        add_generation_prompt=True,
        tokenize=False,
    )
    encoded: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return encoded


def encode_batch(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> Batch:
    """``examples`` as one training batch, loss on reply tokens and the closing EOS only."""
    prompts = encode_prompts(tokenizer, [example.prompt for example in examples])
    answers = tokenizer([example.answer for example in examples], add_special_tokens=False)
    rows = [
        (prompt, [*answer, IM_END_ID])
        for prompt, answer in zip(prompts, answers["input_ids"], strict=True)
    ]
    width = max(len(prompt) + len(answer) for prompt, answer in rows)
    input_ids = torch.full((len(rows), width), END_OF_TEXT_ID, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for row, (prompt, answer) in enumerate(rows):
        end = len(prompt) + len(answer)
        input_ids[row, :end] = torch.tensor(prompt + answer)
        labels[row, len(prompt) : end] = torch.tensor(answer)
    return Batch(input_ids, labels)


def draw_batches(recipe: Recipe) -> list[list[Example]]:
    """``steps`` batches of training examples, each example of a skill drawn by the
    recipe's weights. Every batch mixes skills: batches of one skill each made the skills
    take turns undoing each other's progress and trained markedly worse."""
    rng = random.Random(f"mix/{recipe.seed}")
    names = list(recipe.skills)
    streams = {name: SKILLS[name].stream(Split.TRAIN, recipe.seed) for name in names}
    weights = list(recipe.skills.values())
    return [
        [next(streams[name]) for name in rng.choices(names, weights, k=recipe.batch_size)]
        for _ in range(recipe.steps)
    ]


def scale_learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak learning rate."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, progress: Progress | None = None
) -> CausalLM:
    """A model trained from scratch per ``recipe``; the same recipe gives the same weights.

    The caller's torch thread count and random state are left as they were.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            return _optimise(recipe, tokenizer, progress)
    finally:
        torch.set_num_threads(threads)


def _optimise(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, progress: Progress | None
) -> CausalLM:
    """AdamW with warmup and cosine decay over ``recipe``'s batches, from fresh weights."""
    model = create_model(recipe)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=(0.9, 0.98),
        weight_decay=recipe.weight_decay,
        fused=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: scale_learning_rate(recipe, step)
    )
    started = time.monotonic()
    for step, examples in enumerate(draw_batches(recipe), start=1):
        batch = encode_batch(tokenizer, examples)
        loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None and (step % REPORT_EVERY == 0 or step == recipe.steps):
            progress(
                f"{recipe.name}: step {step}/{recipe.steps} loss {loss.item():.4f} "
                f"elapsed {time.monotonic() - started:.1f}s"
            )
    model.train(mode=False)
    return model
