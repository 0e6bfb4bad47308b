"""A client's side of a round in torch: merge the global delta, train its own LoRA, report.

The ClientApp calls these with the message it got; benchmarks call them in one process to
compare aggregation methods on exactly the same local training. Layers are named by their
module path in the base model (``model.layers.0.self_attn.q_proj``), the key both the
dense delta and the factors use.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from modelfleet.federated.aggregation import LoraFactors
from modelfleet.federated.job import ClientSettings, JobSettings
from modelfleet.federated.lora import (
    LoraSettings,
    attach_lora,
    read_adapter,
    reply_loss,
    train_adapter,
    write_adapter,
)
from modelfleet.federated.secure import (
    SecureRound,
    SharedProjection,
    Words,
    agreed_seeds,
    client_upload,
)
from modelfleet.zoo.cache import load_model
from modelfleet.zoo.evaluation import reply
from modelfleet.zoo.models import CausalLM, create_model
from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import Example

PEFT_PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def load_with_delta(
    base_model: str, delta: Mapping[str, np.ndarray]
) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """The zoo model ``base_model`` with ``delta`` added into its weights: the global model.

    A layer the model lacks, or of another shape, means the client runs another base model
    than the server, which is refused here rather than trained on."""
    model, tokenizer = load_model(base_model)
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for layer, value in delta.items():
            weight = weights.get(f"{layer}.weight")
            if weight is None or tuple(weight.shape) != value.shape:
                raise ValueError(
                    f"the global delta adapts {layer} with shape {value.shape}, which "
                    f"{base_model} lacks or shapes differently; every client must load "
                    "spec.baseModel"
                )
            weight.add_(torch.as_tensor(value, dtype=weight.dtype))
    return model, tokenizer


def lora_settings(job: JobSettings, client: ClientSettings, round_number: int) -> LoraSettings:
    """The client's fresh LoRA for a round: its own rank, A seeded per client and round."""
    seed = zlib.crc32(f"{job.seed}/{client.name}/{round_number}".encode())
    return LoraSettings(
        rank=client.rank,
        alpha=job.alpha,
        dropout=job.dropout,
        target_modules=job.target_modules,
        seed=seed,
    )


def round_batches(
    job: JobSettings, examples: Sequence[Example], round_number: int
) -> list[list[Example]]:
    """``localSteps`` batches of the client's training data, continuing where the previous
    round stopped and wrapping around, so every round sees fresh examples while any."""
    size = job.batch_size
    start = (round_number - 1) * job.local_steps * size
    picked = [examples[(start + i) % len(examples)] for i in range(job.local_steps * size)]
    return [picked[i : i + size] for i in range(0, len(picked), size)]


def adapted_shapes(base_model: str, target_modules: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The (d_out, d_in) of every weight LoRA adapts in zoo model ``base_model``, by layer
    name, read off a weightless (meta-device) copy."""
    with torch.device("meta"):
        model = create_model(RECIPES[base_model])
    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in target_modules
    }


def shared_projection(job: JobSettings) -> SharedProjection:
    """The frozen A every client of a secure job trains against, at the job's largest rank;
    its seed is public, derived from the job's."""
    return SharedProjection(
        seed=zlib.crc32(f"{job.seed}/shared-a".encode()),
        max_rank=max(client.rank for client in job.clients),
        shapes=adapted_shapes(job.base_model, job.target_modules),
    )


def masked_round(job: JobSettings, participants: Iterable[str]) -> SecureRound:
    """What a secure round's participants and server agree on: the shared projection, every
    participant's data weight, the job's alpha."""
    weights = {name: job.client(name).weight for name in participants}
    return SecureRound(shared_projection(job), weights, job.alpha)


def mask_update(
    job: JobSettings,
    client: str,
    factors: Mapping[str, LoraFactors],
    keys: Mapping[str, bytes],
    private_key: bytes,
    nonce: str,
) -> Words:
    """``client``'s trained B's, weighted, padded and masked with the seeds it agrees with
    every other participant (``keys``: each participant's public key, its own included)."""
    peers = {name: key for name, key in keys.items() if name != client}
    seeds = agreed_seeds(private_key, peers, nonce)
    b = {layer: pair.b for layer, pair in factors.items()}
    return client_upload(masked_round(job, keys), client, b, seeds)


def freeze_shared_a(model: PeftModel, projection: SharedProjection, rank: int) -> None:
    """Give ``model``'s adapter the shared ``A[:rank]``, frozen, and B zero: only B trains,
    so every client's update lies in the one coordinate system the masked sum needs."""
    state = read_adapter(model)
    for layer, start in projection.start(rank).items():
        for suffix, value in ((A_SUFFIX, start.a), (B_SUFFIX, start.b)):
            key = f"{PEFT_PREFIX}{layer}{suffix}"
            state[key] = torch.as_tensor(value, dtype=state[key].dtype)
    write_adapter(model, state)
    for name, parameter in model.named_parameters():
        if ".lora_A." in name:
            parameter.requires_grad_(False)


def train_round(
    job: JobSettings,
    client: ClientSettings,
    delta: Mapping[str, np.ndarray],
    examples: Sequence[Example],
    round_number: int,
    shared: SharedProjection | None = None,
) -> tuple[dict[str, LoraFactors], float]:
    """Train the client's LoRA on the global model; its factors per layer and mean loss.
    With a ``shared`` projection (secure aggregation) A is that one, frozen."""
    model, tokenizer = load_with_delta(job.base_model, delta)
    peft_model = attach_lora(model, lora_settings(job, client, round_number))
    if shared is not None:
        freeze_shared_a(peft_model, shared, client.rank)
    loss = train_adapter(
        peft_model, tokenizer, round_batches(job, examples, round_number), job.learning_rate
    )
    return factors_of(peft_model), loss


def factors_of(model: PeftModel) -> dict[str, LoraFactors]:
    """The adapter's A and B per base-model layer."""
    state = read_adapter(model)
    layers = sorted(
        name[len(PEFT_PREFIX) : -len(A_SUFFIX)] for name in state if name.endswith(A_SUFFIX)
    )
    return {
        layer: LoraFactors(
            a=state[f"{PEFT_PREFIX}{layer}{A_SUFFIX}"].double().numpy(),
            b=state[f"{PEFT_PREFIX}{layer}{B_SUFFIX}"].double().numpy(),
        )
        for layer in layers
    }


@torch.inference_mode()
def evaluate_delta(
    base_model: str, delta: Mapping[str, np.ndarray], examples: Sequence[Example]
) -> tuple[float, float]:
    """Reply loss and exact-match accuracy of the global model on ``examples``."""
    model, tokenizer = load_with_delta(base_model, delta)
    replies = reply(model, tokenizer, [example.prompt for example in examples])
    correct = sum(got == example.answer for got, example in zip(replies, examples, strict=True))
    return reply_loss(model, tokenizer, examples), correct / len(examples)


def save_adapter(
    job: JobSettings, factors: Mapping[str, LoraFactors], rank: int, directory: Path
) -> None:
    """Write scale-folded ``factors`` as a PEFT adapter of ``job.base_model`` (rank ``rank``,
    ``lora_alpha = rank`` so the scale is 1), loadable by peft and servable by a ModelPool."""
    model, _ = load_model(job.base_model)
    settings = LoraSettings(
        rank=rank, alpha=float(rank), dropout=0.0, target_modules=job.target_modules
    )
    peft_model = attach_lora(model, settings)
    state = read_adapter(peft_model)
    for layer, pair in factors.items():
        for suffix, value in ((A_SUFFIX, pair.a), (B_SUFFIX, pair.b)):
            key = f"{PEFT_PREFIX}{layer}{suffix}"
            state[key] = torch.as_tensor(value, dtype=state[key].dtype)
    write_adapter(peft_model, state)
    peft_model.save_pretrained(str(directory))


def float32_bytes(factors: Mapping[str, LoraFactors]) -> int:
    """Bytes of the factors as float32 arrays: what an uncompressed upload carries."""
    return sum(4 * (pair.a.size + pair.b.size) for pair in factors.values())
