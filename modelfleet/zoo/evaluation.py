"""Held-out exact-match accuracy of a zoo model, per skill, the way it would be served.

Questions go through the chat template and replies are decoded greedily until
``<|im_end|>``, so a score measures what a client of the served model would get. Every
model is scored on the same questions of every skill, including skills it never learned,
so scores compare across the zoo and show where each model is weak.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from modelfleet.zoo.models import CausalLM
from modelfleet.zoo.skills import SKILLS, Split
from modelfleet.zoo.tokenizer import END_OF_TEXT_ID, IM_END_ID
from modelfleet.zoo.training import encode_prompts

EVAL_SEED = 0
"""Seed of the held-out questions, shared by all models so their scores compare."""

EVAL_EXAMPLES = 200
"""Held-out questions per skill."""

MAX_REPLY_TOKENS = 16
"""Longer than any correct reply of any skill in every zoo vocabulary."""

EVAL_BATCH = 100
"""Questions decoded together."""


@torch.inference_mode()
def reply(model: CausalLM, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """The greedy assistant reply to each user prompt, stripped of surrounding space."""
    replies: list[str] = []
    for start in range(0, len(prompts), EVAL_BATCH):
        encoded = encode_prompts(tokenizer, prompts[start : start + EVAL_BATCH])
        width = max(map(len, encoded))
        input_ids = torch.full((len(encoded), width), END_OF_TEXT_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=MAX_REPLY_TOKENS,
            do_sample=False,
            eos_token_id=IM_END_ID,
            pad_token_id=END_OF_TEXT_ID,
        )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        replies.extend(text.strip() for text in texts)
    return replies


def evaluate(model: CausalLM, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
    """Held-out exact-match accuracy of ``model`` on every skill, by skill name."""
    accuracy: dict[str, float] = {}
    for name, skill in SKILLS.items():
        examples = skill.take(Split.HELDOUT, EVAL_SEED, EVAL_EXAMPLES)
        replies = reply(model, tokenizer, [example.prompt for example in examples])
        correct = sum(got == example.answer for got, example in zip(replies, examples, strict=True))
        accuracy[name] = correct / len(examples)
    return accuracy
