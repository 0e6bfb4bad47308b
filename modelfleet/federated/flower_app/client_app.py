"""The ClientApp: one site fine-tunes the global LoRA adapter on its own data only.

A SuperNode's node config names its partition and the skill it mostly holds; its
examples are drawn here, at the site, so nothing but adapter weights and a few metrics
ever leaves it.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from modelfleet.federated.flower_app.settings import (
    NodeSettings,
    RunSettings,
    parse_node_config,
    parse_run_config,
)
from modelfleet.federated.lora import (
    attach_lora,
    read_adapter,
    reply_accuracy,
    reply_loss,
    train_adapter,
    write_adapter,
)
from modelfleet.federated.partition import draw_examples, mix_skills
from modelfleet.zoo import Split, load_model
from modelfleet.zoo.skills import Example

CLIENT_THREADS = 1
"""Torch threads per client: every SuperNode of a local federation shares one machine."""

SEEDS_PER_PARTITION = 10_000
"""Rounds a partition can run before its training seeds would meet the next partition's."""

app = ClientApp()


def _settings(context: Context) -> tuple[RunSettings, NodeSettings]:
    run = parse_run_config(context.run_config)
    return run, parse_node_config(context.node_config, run.skills)


def _receive_adapter(run: RunSettings, msg: Message) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with the server's current adapter loaded."""
    torch.set_num_threads(CLIENT_THREADS)
    base, tokenizer = load_model(run.base_model)
    model = attach_lora(base, run.lora)
    write_adapter(model, msg.content["arrays"].to_torch_state_dict())
    return model, tokenizer


def _draw(
    run: RunSettings, node: NodeSettings, split: Split, seed: int, count: int
) -> list[Example]:
    return draw_examples(mix_skills(node.skill, run.skills), split, seed, count)


def _reply(msg: Message, metrics: dict[str, float | int], model: PeftModel | None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if model is not None:
        content["arrays"] = ArrayRecord(read_adapter(model))
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``local-steps`` batches of this site's training split, fresh ones every round."""
    run, node = _settings(context)
    model, tokenizer = _receive_adapter(run, msg)
    server_round = int(msg.content["config"]["server-round"])
    seed = node.partition_id * SEEDS_PER_PARTITION + server_round
    examples = _draw(run, node, Split.TRAIN, seed, run.local_steps * run.batch_size)
    batches = [
        examples[start : start + run.batch_size]
        for start in range(0, len(examples), run.batch_size)
    ]
    loss = train_adapter(model, tokenizer, batches, run.learning_rate)
    metrics = {"loss": loss, "num-examples": len(examples), "partition-id": node.partition_id}
    return _reply(msg, metrics, model)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global adapter on this site's held-out split: the same questions every round."""
    run, node = _settings(context)
    model, tokenizer = _receive_adapter(run, msg)
    examples = _draw(run, node, Split.HELDOUT, node.partition_id, run.eval_examples)
    metrics = {
        "loss": reply_loss(model, tokenizer, examples),
        "accuracy": reply_accuracy(model, tokenizer, examples),
        "num-examples": len(examples),
        "partition-id": node.partition_id,
    }
    return _reply(msg, metrics, None)
