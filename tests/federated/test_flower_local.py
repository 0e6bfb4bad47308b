"""A real local federation on Flower's deployment engine: a SuperLink and three SuperNodes
as processes on loopback, each client fine-tuning LoRA mostly on one skill the base model
cannot do, FedAvg over the adapters, and the final adapter loaded back with peft."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel

from modelfleet.federated.local_federation import run_local_federation
from modelfleet.federated.lora import reply_accuracy, reply_loss
from modelfleet.federated.partition import draw_examples
from modelfleet.federated.processes import find_marked_processes
from modelfleet.zoo import load_model, read_manifest
from modelfleet.zoo.cache import model_dir
from modelfleet.zoo.skills import Split

BASE_MODEL = "qwen-words"
CLIENT_SKILLS = ("addition", "sorting", "maximum")
"""One client each; the base model scores zero on all three (see its zoo.json)."""
ROUNDS = 2
HELDOUT_SEED = 12345
"""Questions none of the clients drew for training or evaluation."""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_three_clients_federate_an_adapter_that_beats_the_base_model(tmp_path: Path) -> None:
    base, tokenizer = load_model(BASE_MODEL)
    manifest = read_manifest(model_dir(BASE_MODEL))
    assert manifest is not None
    assert all(manifest.accuracy[skill] < 0.1 for skill in CLIENT_SKILLS)

    result = run_local_federation(
        CLIENT_SKILLS,
        {
            "base-model": BASE_MODEL,
            "target-modules": "q_proj,v_proj,o_proj,up_proj,down_proj",
            "num-server-rounds": ROUNDS,
            "local-steps": 10,
            "batch-size": 16,
            "learning-rate": 0.005,
        },
        tmp_path,
        timeout=360,
    )

    print(f"\nfederation of {len(CLIENT_SKILLS)} clients took {result.seconds:.0f}s")
    for record in result.rounds:
        print(record)
    assert [record.round for record in result.rounds] == list(range(1, ROUNDS + 1))
    for record in result.rounds:
        assert record.train_clients == (0, 1, 2)
        assert record.evaluate_clients == (0, 1, 2)
    assert result.rounds[-1].eval_loss < result.rounds[0].eval_loss
    assert find_marked_processes(result.marker) == []

    for skill in CLIENT_SKILLS:
        heldout = draw_examples({skill: 1.0}, Split.HELDOUT, HELDOUT_SEED, 40)
        base_loss = reply_loss(base, tokenizer, heldout)
        adapted = PeftModel.from_pretrained(load_model(BASE_MODEL)[0], result.adapter_dir)
        adapted_loss = reply_loss(adapted, tokenizer, heldout)
        accuracy = reply_accuracy(adapted, tokenizer, heldout)
        print(
            f"{skill}: held-out loss {base_loss:.3f} -> {adapted_loss:.3f}, "
            f"accuracy {manifest.accuracy[skill]:.3f} -> {accuracy:.3f}"
        )
        assert adapted_loss < base_loss - 1.0
