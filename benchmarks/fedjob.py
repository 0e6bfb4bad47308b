"""Federated LoRA on a non-IID split: FLoRA with mixed ranks against FedAvg, local-only and
centralised training, the bytes compression saves, and the seconds a real Flower round takes.

Run: ``python benchmarks/fedjob.py`` (``--seeds 5`` for tighter intervals). Every
figure is measured in this run, so the ratios compare across machines.

Setup. ``zoo://qwen-tiny``, which does the clients' skills well but not perfectly (held-
out reversal 0.91, sorting 0.93, maximum 0.965, see its zoo.json), so fine-tuning has room
to show in accuracy within a few rounds. (On ``qwen-words``, which scores 0 on sorting and
maximum, a few hundred LoRA steps cut the held-out loss from about 10 to 2.4 but leave
exact-match accuracy at 0: nothing to compare.) Three clients, each drawing 80% of its
examples from one skill and 10% from each other skill
(:func:`~modelfleet.federated.partition.mix_skills`); each is evaluated on held-out
questions drawn the same way, which none of them trained on. Every method trains the same
way per round: the client adds the global delta into its frozen base, trains a fresh LoRA
for ``--local-steps`` batches of its own data
(:func:`~modelfleet.federated.client_training.train_round`, the ClientApp's code), and the
server folds the aggregated update into the delta (:func:`~modelfleet.federated.rounds.
aggregate_round`, the ServerApp's code). Only the transport differs from a FedJob: here
the clients run one after another in this process.

- FLoRA: ranks 4, 8, 16; the stacked update is exactly the weighted sum of B·A.
- FedAvg: every client rank 8 (FedAvg cannot mix ranks), A and B averaged separately, the
  FedIT baseline.
- Local-only: each client trains alone for the same rounds and steps, and is scored on its
  own held-out questions: what a site gets without federating.
- Centralised: one rank-16 LoRA on the pooled data of all clients, three times the steps
  per round (the same examples seen in all): the upper bound federating approximates.

Accuracy is exact match of the greedy reply, averaged over the three clients' held-out
sets, with a 95% bootstrap interval over seeds (each seed redraws data and LoRA inits).

Compression: FLoRA's uploads as float32 factors against top-k (``--sparsity``) + Int8 with
error feedback, bytes counted as encoded on the wire; its accuracy is printed beside.

Secure aggregation: the same FLoRA job with ``secure`` on, as the runtime runs it (shared
frozen A, B's masked with X25519-agreed seeds, only the sum decoded): its accuracy (only B
trains) and its upload bytes (one uint32 per entry of the padded B's) against FLoRA's.

Seconds per round: the same FLoRA job run for ``--flower-rounds`` rounds on Flower's
deployment engine (a SuperLink and three SuperNodes as processes, ClientApps in their own
processes, :func:`~modelfleet.federated.local_federation.run_federation`), against the same
round in this process: the ratio is what processes and gRPC cost. Needs
``make federated-venv``; ``--flower-rounds 0`` skips it.

Ends with ``RESULT fedjob_flora_accuracy``, ``fedjob_fedavg_accuracy``,
``fedjob_local_only_accuracy``, ``fedjob_centralised_accuracy`` (mean held-out accuracy),
``fedjob_compression_bytes_ratio`` (uncompressed / compressed upload bytes per round),
``fedjob_secure_accuracy``, ``fedjob_secure_bytes_ratio`` (masked / float32 factor bytes)
and ``fedjob_seconds_per_round`` (a Flower round's wall time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from common.bootstrap import interval
from common.result_lines import print_result
from transformers.utils import logging as transformers_logging

from modelfleet.federated.checkpoint import read_latest_state
from modelfleet.federated.client_training import (
    evaluate_delta,
    float32_bytes,
    mask_update,
    masked_round,
    shared_projection,
    train_round,
)
from modelfleet.federated.compression import ErrorFeedback, decode
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.job import (
    JOB_FILE,
    ClientSettings,
    CompressionSettings,
    JobSettings,
    Method,
)
from modelfleet.federated.local_federation import run_federation, write_sites
from modelfleet.federated.partition import draw_examples, mix_skills
from modelfleet.federated.rounds import Contribution, Delta, add_delta, aggregate_round
from modelfleet.federated.secure import aggregate as unmask
from modelfleet.federated.secure import new_exchange_key
from modelfleet.zoo.cache import ensure_model
from modelfleet.zoo.skills import Example, Split

FLORA_RANKS = (4, 8, 16)
FEDAVG_RANK = 8
CENTRAL_RANK = 16


@dataclass(frozen=True)
class Site:
    """One client's data: its own training stream and held-out questions."""

    name: str
    train: list[Example]
    heldout: list[Example]


@dataclass(frozen=True)
class Outcome:
    """A method's mean held-out accuracy, upload bytes per round and seconds per round."""

    accuracy: float
    bytes_per_round: float
    seconds_per_round: float


def draw_sites(skills: Sequence[str], seed: int, train: int, heldout: int) -> list[Site]:
    """Each client mostly one skill; seeds per client and per run."""
    return [
        Site(
            f"site-{index}",
            draw_examples(mix_skills(skill, skills), Split.TRAIN, seed * 100 + index, train),
            draw_examples(mix_skills(skill, skills), Split.HELDOUT, seed * 100 + index, heldout),
        )
        for index, skill in enumerate(skills)
    ]


def federate(
    job: JobSettings, data: dict[str, list[Example]], rng: np.random.Generator
) -> tuple[Delta, float, float]:
    """Run ``job.rounds`` rounds in this process; the delta, bytes and seconds per round."""
    delta: Delta = {}
    feedback = {c.name: ErrorFeedback(job.compression) for c in job.clients if job.compression}
    sent = 0
    started = time.perf_counter()
    for round_number in range(1, job.rounds + 1):
        if job.secure:
            update, uploaded = masked_update(job, data, delta, round_number)
            delta = add_delta(delta, update)
            sent += uploaded
            continue
        contributions = []
        for client in job.clients:
            factors, _ = train_round(job, client, delta, data[client.name], round_number)
            if job.compression is None:
                sent += float32_bytes(factors)
                contributions.append(Contribution(client.name, client.weight, factors=factors))
                continue
            dense = Contribution(client.name, client.weight, factors=factors).delta(job.alpha)
            payloads = {k: feedback[client.name].compress(k, v) for k, v in dense.items()}
            sent += sum(len(p) for p in payloads.values())
            decoded = {k: decode(p, dense[k].shape).astype(np.float64) for k, p in payloads.items()}
            contributions.append(Contribution(client.name, client.weight, dense=decoded))
        delta = add_delta(delta, aggregate_round(job, contributions, rng).delta)
    seconds = time.perf_counter() - started
    return delta, sent / job.rounds, seconds / job.rounds


def masked_update(
    job: JobSettings, data: dict[str, list[Example]], delta: Delta, round_number: int
) -> tuple[Delta, int]:
    """One secure round as the runtime runs it, clients in turn: fresh X25519 keys, B
    trained against the shared A, uploads masked with the agreed seeds, only the sum
    decoded. The round's update and the bytes uploaded."""
    keys = {client.name: new_exchange_key() for client in job.clients}
    public = {name: pair[1] for name, pair in keys.items()}
    shared = shared_projection(job)
    words = {}
    for client in job.clients:
        factors, _ = train_round(job, client, delta, data[client.name], round_number, shared)
        words[client.name] = mask_update(
            job, client.name, factors, public, keys[client.name][0], f"{round_number}"
        )
    summed = unmask(masked_round(job, keys), words)
    return {layer: f.product() for layer, f in summed.items()}, sum(
        w.nbytes for w in words.values()
    )


def accuracy(base: str, delta: Delta, heldout: Sequence[list[Example]]) -> float:
    """Mean exact-match accuracy of base + delta over the clients' held-out sets."""
    return float(np.mean([evaluate_delta(base, delta, examples)[1] for examples in heldout]))


def settings(
    base: str, method: Method, ranks: Sequence[int], args: argparse.Namespace, seed: int
) -> JobSettings:
    return JobSettings(
        base_model=base,
        alpha=16.0,
        dropout=0.0,
        target_modules=tuple(args.target_modules.split(",")),
        clients=tuple(ClientSettings(f"site-{i}", rank, 1.0) for i, rank in enumerate(ranks)),
        rounds=args.rounds,
        local_steps=args.local_steps,
        method=method,
        min_clients=len(ranks),
        client_fraction=1.0,
        learning_rate=args.learning_rate,
        eval_examples=args.heldout,
        seed=seed,
    )


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Outcome]:
    """Every method on one draw of the data."""
    skills = args.skills.split(",")
    sites = draw_sites(skills, seed, args.train, args.heldout)
    data = {site.name: site.train for site in sites}
    heldout = [site.heldout for site in sites]
    rng = np.random.default_rng(seed)
    outcomes = {}
    flora = settings(args.base, Method.FLORA, FLORA_RANKS, args, seed)
    compressed = replace(flora, compression=CompressionSettings(args.sparsity, "Int8"))
    secure = replace(flora, secure=True)
    fedavg = settings(args.base, Method.FEDAVG, [FEDAVG_RANK] * len(sites), args, seed)
    methods = (
        ("flora", flora),
        ("flora_compressed", compressed),
        ("flora_secure", secure),
        ("fedavg", fedavg),
    )
    for name, job in methods:
        delta, sent, seconds = federate(job, data, rng)
        outcomes[name] = Outcome(accuracy(args.base, delta, heldout), sent, seconds)
    local = []
    for site, rank in zip(sites, FLORA_RANKS, strict=True):
        alone = replace(flora, clients=(ClientSettings(site.name, rank, 1.0),), min_clients=1)
        delta, _, _ = federate(alone, data, rng)
        local.append(evaluate_delta(args.base, delta, site.heldout)[1])
    outcomes["local_only"] = Outcome(float(np.mean(local)), 0.0, 0.0)
    pooled = [example for triple in zip(*data.values(), strict=True) for example in triple]
    central = replace(
        flora,
        clients=(ClientSettings("pooled", CENTRAL_RANK, 1.0),),
        min_clients=1,
        local_steps=args.local_steps * len(sites),
    )
    delta, _, _ = federate(central, {"pooled": pooled}, rng)
    outcomes["centralised"] = Outcome(accuracy(args.base, delta, heldout), 0.0, 0.0)
    outcomes["base"] = Outcome(accuracy(args.base, {}, heldout), 0.0, 0.0)
    return outcomes


def flower_seconds_per_round(args: argparse.Namespace, workdir: Path) -> float:
    """Wall seconds per round of the FLoRA job on Flower's deployment engine."""
    skills = args.skills.split(",")
    datasets = {
        f"site-{i}": write_site_dataset(
            workdir / f"site-{i}", skill, skills, i, args.train, args.heldout
        )
        for i, skill in enumerate(skills)
    }
    job = replace(
        settings(args.base, Method.FLORA, FLORA_RANKS, args, 0), rounds=args.flower_rounds
    )
    run_dir = workdir / "run"
    run_dir.mkdir()
    (run_dir / JOB_FILE).write_text(job.to_json())
    write_sites(run_dir, datasets)
    result = run_federation(run_dir, timeout=3600)
    state = read_latest_state(run_dir)
    if result.phase != "Succeeded" or state is None:
        raise RuntimeError(f"the Flower run ended {result}; logs in {run_dir / 'logs'}")
    return sum(report.seconds for report in state.reports) / len(state.reports)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="qwen-tiny")
    parser.add_argument("--skills", default="reversal,sorting,maximum")
    parser.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=0.003)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flower-rounds", type=int, default=2)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    ensure_model(args.base, progress=print)

    runs = []
    for seed in range(args.seeds):
        outcomes = run_seed(args, seed)
        runs.append(outcomes)
        line = ", ".join(f"{name} {o.accuracy:.3f}" for name, o in outcomes.items())
        print(f"seed {seed}: held-out accuracy {line}", flush=True)

    print(f"\nheld-out accuracy over {args.seeds} seed(s), mean [95% bootstrap interval]:")
    means = {}
    for name in runs[0]:
        values = [run[name].accuracy for run in runs]
        low, high = interval(values, np.mean)
        means[name] = float(np.mean(values))
        print(f"  {name:17s} {means[name]:.3f} [{low:.3f}, {high:.3f}]")
    plain = np.mean([run["flora"].bytes_per_round for run in runs])
    packed = np.mean([run["flora_compressed"].bytes_per_round for run in runs])
    print(
        f"\nupload bytes per round: float32 factors {plain:.0f}, top-k {args.sparsity} + Int8 "
        f"with error feedback {packed:.0f} (ratio {plain / packed:.2f}); accuracy "
        f"{means['flora']:.3f} -> {means['flora_compressed']:.3f}"
    )
    masked = np.mean([run["flora_secure"].bytes_per_round for run in runs])
    print(
        f"secure aggregation (shared frozen A, masked B's): upload bytes per round {masked:.0f} "
        f"({masked / plain:.2f}x FLoRA's float32 factors); accuracy {means['flora_secure']:.3f}"
    )
    in_process = float(np.mean([run["flora"].seconds_per_round for run in runs]))
    flower = 0.0
    if args.flower_rounds:
        with tempfile.TemporaryDirectory() as workdir:
            flower = flower_seconds_per_round(args, Path(workdir))
        print(
            f"seconds per round: Flower deployment engine {flower:.1f}, the same round in "
            f"one process {in_process:.1f} (ratio {flower / in_process:.2f})"
        )
    print_result("fedjob_flora_accuracy", means["flora"])
    print_result("fedjob_fedavg_accuracy", means["fedavg"])
    print_result("fedjob_local_only_accuracy", means["local_only"])
    print_result("fedjob_centralised_accuracy", means["centralised"])
    print_result("fedjob_compression_bytes_ratio", plain / packed)
    print_result("fedjob_secure_accuracy", means["flora_secure"])
    print_result("fedjob_secure_bytes_ratio", masked / plain)
    print_result("fedjob_seconds_per_round", flower or in_process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
