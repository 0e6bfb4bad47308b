"""LoRA adapters on zoo models: attach, train locally, score, and move as tensors.

A federated round ships only the adapter, never the base model, so everything here works
on the adapter's own state dict (peft's names without the adapter name), which is what a
Flower ``ArrayRecord`` carries and what the aggregation averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedTokenizerBase

from modelfleet.zoo.evaluation import reply
from modelfleet.zoo.models import CausalLM
from modelfleet.zoo.skills import Example
from modelfleet.zoo.training import encode_batch

AdapterState = dict[str, torch.Tensor]
"""An adapter's weights by peft's adapter-independent names."""


@dataclass(frozen=True)
class LoraSettings:
    """The adapter every client trains: equal settings give arrays FedAvg can average."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    seed: int = 0
    """Seeds the initial A matrices, so the server's initial adapter is reproducible."""


def attach_lora(model: CausalLM, settings: LoraSettings) -> PeftModel:
    """``model`` with fresh LoRA adapters on ``settings.target_modules``, base weights frozen.

    A target module the model lacks fails here, naming the modules, rather than training
    nothing."""
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft says int; any real works
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return cast(PeftModel, get_peft_model(model, config))


def read_adapter(model: PeftModel) -> AdapterState:
    """Copies of the adapter's weights, detached from the model."""
    state = get_peft_model_state_dict(model)
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def write_adapter(model: PeftModel, state: AdapterState) -> None:
    """Load ``state`` into ``model``'s adapter; a missing or unexpected name is an error,
    because a silently skipped matrix would leave a client training a stale adapter."""
    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        raise ValueError(
            f"adapter state does not fit the model: missing {sorted(expected - set(state))[:4]}, "
            f"unexpected {sorted(set(state) - expected)[:4]}"
        )
    set_peft_model_state_dict(model, state)


def train_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    batches: Sequence[Sequence[Example]],
    learning_rate: float,
) -> float:
    """One AdamW step per batch on the adapter only; the mean training loss.

    The optimiser is fresh each call: its moments would describe the client's previous
    adapter, not the aggregate it received this round."""
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    losses: list[float] = []
    for examples in batches:
        batch = encode_batch(tokenizer, examples)
        loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
    model.train(mode=False)
    return sum(losses) / len(losses)


@torch.inference_mode()
def reply_loss(
    model: CausalLM | PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> float:
    """Mean cross-entropy of the correct replies: moves before exact-match accuracy does."""
    batch = encode_batch(tokenizer, examples)
    return float(model(input_ids=batch.input_ids, labels=batch.labels).loss.item())


def reply_accuracy(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> float:
    """Share of ``examples`` answered exactly, decoded greedily as the model would be served."""
    served = cast(CausalLM, model.get_base_model())
    replies = reply(served, tokenizer, [example.prompt for example in examples])
    correct = sum(got == example.answer for got, example in zip(replies, examples, strict=True))
    return correct / len(examples)
