"""Benchmark of the torch serving engine: continuous batching and migration downtime.

Run: ``python benchmarks/serving_engine.py``. Every figure is a ratio against a baseline
measured in the same run, so the numbers compare across machines; nothing is asserted.

1. Decode throughput of N concurrent requests under continuous batching against the same
   requests served one at a time (outputs are checked to be identical).
2. Migration downtime, from stopping a request on the source until the target holds it
   ready to decode, for staged migration (full blocks copied while it keeps decoding
   into the target, then stop-and-copy of the rest) against one full stop-and-copy, for
   sequence lengths 256 to 4096. The transfer is emulated by pickling what is exported.
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Sequence

import torch

from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.model import ModelConfig, Decoder
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine

PROMPT_LENGTH = 32


def prompt(length: int, salt: int) -> list[int]:
    """A deterministic prompt of byte tokens."""
    return [(31 * i + 17 * salt) % 256 for i in range(length)]


def serve_together(
    engine: TorchEngine, requests: int, params: SamplingParams
) -> dict[str, list[int]]:
    """All requests at once; continuous batching decodes them in shared steps."""
    for i in range(requests):
        engine.add_request(f"r{i}", prompt(PROMPT_LENGTH, i), params)
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(requests)}
    while engine.load().running or engine.load().waiting:
        for event in engine.step():
            tokens[event.request_id].append(event.token_id)
    return tokens


def serve_one_by_one(
    engine: TorchEngine, requests: int, params: SamplingParams
) -> dict[str, list[int]]:
    """The baseline: each request runs alone to completion before the next starts."""
    tokens = {}
    for i in range(requests):
        engine.add_request(f"r{i}", prompt(PROMPT_LENGTH, i), params)
        tokens[f"r{i}"] = [event.token_id for event in engine.stream(f"r{i}")]
    return tokens


def measure_throughput(model: Decoder, concurrency: Sequence[int], max_tokens: int) -> None:
    """Print tokens/s with continuous batching against one request at a time."""
    params = SamplingParams(max_tokens=max_tokens)
    print(f"\nthroughput: {max_tokens} greedy tokens per request, prompt {PROMPT_LENGTH} tokens")
    print(f"{'requests':>8} {'one-by-one tok/s':>17} {'batched tok/s':>14} {'ratio':>6} identical")
    for requests in concurrency:
        rates = []
        results = []
        for serve in (serve_one_by_one, serve_together):
            engine = TorchEngine(model, EngineConfig(num_blocks=512, block_size=16))
            start = time.perf_counter()
            results.append(serve(engine, requests, params))
            rates.append(requests * max_tokens / (time.perf_counter() - start))
        identical = results[0] == results[1]
        print(
            f"{requests:>8} {rates[0]:>17.0f} {rates[1]:>14.0f} {rates[1] / rates[0]:>5.2f}x"
            f" {identical}"
        )


def migrate(
    model: Decoder, config: EngineConfig, length: int, staged: bool
) -> tuple[float, float]:
    """Migrate one request of ``length`` tokens; return (downtime, overlapped pre-copy) in s.

    Downtime runs from stopping the request on the source until the target holds it ready
    to decode. The staged variant first copies the full blocks into the target while the
    request decodes a few more tokens on the source, as it would while they are in flight.
    """
    source, target = TorchEngine(model, config), TorchEngine(model, config)
    source.add_request("m", prompt(length - 1, 0), SamplingParams(max_tokens=16))
    source.step()
    staged_until = 0
    precopy = 0.0
    if staged:
        start = time.perf_counter()
        chunk = pickle.loads(pickle.dumps(source.export_kv_blocks("m")))
        target.import_kv_blocks("m", chunk)
        staged_until = chunk.end_block
        precopy = time.perf_counter() - start
    for _ in range(3):
        source.step()
    start = time.perf_counter()
    state = pickle.loads(pickle.dumps(source.export_request("m", from_block=staged_until)))
    target.import_request(state)
    downtime = time.perf_counter() - start
    events = target.step()
    assert target.block_table("m") and events[0].index == len(state.output_token_ids)
    return downtime, precopy


def measure_downtime(lengths: Sequence[int], repeats: int) -> None:
    """Print migration downtime against sequence length for staged and full copies."""
    model = Decoder(ModelConfig(max_positions=max(lengths) + 64))
    config = EngineConfig(num_blocks=-(-model.config.max_positions // 16), block_size=16)
    print("\nmigration downtime (stop on source -> ready on target), median ms")
    print(
        f"{'length':>7} {'full copy':>10} {'staged':>8} {'ratio':>7} {'pre-copy (overlapped)':>22}"
    )
    for length in lengths:
        full = sorted(migrate(model, config, length, staged=False)[0] for _ in range(repeats))
        staged = sorted(migrate(model, config, length, staged=True) for _ in range(repeats))
        full_ms = 1000 * full[repeats // 2]
        staged_ms, precopy_ms = (1000 * value for value in staged[repeats // 2])
        print(
            f"{length:>7} {full_ms:>10.2f} {staged_ms:>8.2f} {full_ms / staged_ms:>6.1f}x"
            f" {precopy_ms:>22.2f}"
        )


def main() -> None:
    """Parse arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measure_throughput(Decoder(ModelConfig()), args.concurrency, args.max_tokens)
    measure_downtime(args.lengths, args.repeats)


if __name__ == "__main__":
    main()
