"""Benchmark of the torch serving engine: batching, prefill stalls and migration downtime.

Run: ``python benchmarks/serving_engine.py``. Every figure is a ratio against a baseline
measured in the same run, so the numbers compare across machines; nothing is asserted.

1. Decode throughput against ``transformers`` ``generate`` with static batching, the
   baseline a practitioner runs without a server: the same checkpoint (a Hugging Face
   Llama, GQA), the same batch of prompts, greedy, the same number of new tokens; the
   outputs are checked to be token-identical.
2. The prefill stall: the latency of decode steps of running requests while a long
   prompt arrives, with the whole prompt prefilled in one step (no chunking) against
   chunked prefill, and the long prompt's time to first token in both.
3. Decode throughput of N concurrent requests under continuous batching against the same
   requests served one at a time (outputs are checked to be identical).
4. Migration downtime, from stopping a request on the source until the target holds it
   ready to decode, for staged migration (full blocks copied while it keeps decoding
   into the target, then stop-and-copy of the rest) against one full stop-and-copy, for
   sequence lengths 256 to 4096. The transfer is emulated by pickling what is exported.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from modelfleet.serving.checkpoint import load_decoder
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.model import Decoder, ModelConfig
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


def save_benchmark_checkpoint(directory: Path) -> None:
    """A Llama checkpoint of a small serving size (GQA, 8 layers, 512 wide, ~30M
    parameters) with random weights: the shapes, not the answers, set the speed."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def hf_static_batch(model: Any, prompts: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """One static batch through ``generate``: every row decodes ``max_tokens`` tokens."""
    with torch.inference_mode():
        output = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return [[int(t) for t in row[prompts.shape[1] :]] for row in output]


def engine_batch(decoder: Decoder, prompts: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """The same batch submitted to the engine at once (continuous batching)."""
    engine = TorchEngine(decoder, EngineConfig(num_blocks=1024, block_size=16))
    params = SamplingParams(max_tokens=max_tokens)
    for i, row in enumerate(prompts.tolist()):
        engine.add_request(f"r{i}", row, params)
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.load().running or engine.load().waiting:
        for event in engine.step():
            tokens[event.request_id].append(event.token_id)
    return [tokens[f"r{i}"] for i in range(len(prompts))]


def measure_vs_transformers(
    directory: Path, batches: Sequence[int], max_tokens: int, repeats: int
) -> float:
    """Print engine vs ``generate`` tokens/s per batch size; returns the largest batch's."""
    reference = AutoModelForCausalLM.from_pretrained(directory).eval()
    decoder = load_decoder(directory, 1024)
    print(f"\ndecode vs transformers generate (static batch), {max_tokens} tokens, prompt 32")
    print(f"{'batch':>6} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6} identical")
    ratio = 0.0
    for batch in batches:
        prompts = torch.randint(
            1, 8192, (batch, PROMPT_LENGTH), generator=torch.Generator().manual_seed(batch)
        )
        timings: dict[str, list[float]] = {"hf": [], "engine": []}
        outputs: dict[str, list[list[int]]] = {}
        runners = {
            "hf": partial(hf_static_batch, reference, prompts, max_tokens),
            "engine": partial(engine_batch, decoder, prompts, max_tokens),
        }
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                outputs[name] = run()
                timings[name].append(time.perf_counter() - start)
        rates = {k: batch * max_tokens / statistics.median(v) for k, v in timings.items()}
        ratio = rates["engine"] / rates["hf"]
        identical = outputs["hf"] == outputs["engine"]
        print(
            f"{batch:>6} {rates['hf']:>15.0f} {rates['engine']:>13.0f} {ratio:>5.2f}x {identical}"
        )
    return ratio


def stall(decoder: Decoder, chunk: int, long_prompt: int) -> tuple[float, float, float]:
    """(worst and median decode step ms while a long prompt is prefilled, its TTFT ms).

    Eight requests are decoding when the long prompt arrives; every step until its first
    token is timed, and each of those steps also advances the eight.
    """
    engine = TorchEngine(
        decoder, EngineConfig(num_blocks=1024, block_size=16, prefill_chunk_size=chunk)
    )
    for i in range(8):
        engine.add_request(f"d{i}", prompt(PROMPT_LENGTH, i), SamplingParams(max_tokens=512))
    for _ in range(3):
        engine.step()
    engine.add_request("long", prompt(long_prompt, 99), SamplingParams(max_tokens=1))
    steps: list[float] = []
    arrived = time.perf_counter()
    while True:
        start = time.perf_counter()
        events = engine.step()
        steps.append(1000 * (time.perf_counter() - start))
        if any(event.request_id == "long" for event in events):
            return max(steps), statistics.median(steps), 1000 * (time.perf_counter() - arrived)


def measure_prefill_stall(directory: Path, long_prompt: int, chunk: int, repeats: int) -> float:
    """Print decode step latency while a long prompt arrives, unchunked vs chunked."""
    decoder = load_decoder(directory, 4096)
    print(f"\nprefill stall: 8 decoding requests, a {long_prompt}-token prompt arrives")
    print(f"{'prefill':>12} {'worst step ms':>14} {'median step ms':>15} {'long TTFT ms':>13}")
    worst = {}
    for label, size in (("whole", long_prompt), (f"chunk {chunk}", chunk)):
        runs = [stall(decoder, size, long_prompt) for _ in range(repeats)]
        worst[label] = statistics.median(r[0] for r in runs)
        median_step = statistics.median(r[1] for r in runs)
        ttft = statistics.median(r[2] for r in runs)
        print(f"{label:>12} {worst[label]:>14.1f} {median_step:>15.1f} {ttft:>13.0f}")
    return worst["whole"] / worst[f"chunk {chunk}"]


def migrate(model: Decoder, config: EngineConfig, length: int, staged: bool) -> tuple[float, float]:
    """Migrate one request of ``length`` tokens; return (downtime, overlapped pre-copy) in s.

    Downtime runs from stopping the request on the source until the target holds it ready
    to decode. The staged variant first copies the full blocks into the target while the
    request decodes a few more tokens on the source, as it would while they are in flight.
    """
    source, target = TorchEngine(model, config), TorchEngine(model, config)
    source.add_request("m", prompt(length - 1, 0), SamplingParams(max_tokens=16))
    while not source.step():
        pass
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
    """Parse arguments, run every benchmark, end with the headline RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--long-prompt", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        save_benchmark_checkpoint(directory)
        speedup = measure_vs_transformers(directory, args.batches, args.max_tokens, args.repeats)
        stall_ratio = measure_prefill_stall(directory, args.long_prompt, args.chunk, args.repeats)
    measure_throughput(Decoder(ModelConfig()), args.concurrency, args.max_tokens)
    measure_downtime(args.lengths, args.repeats)
    print()
    print(f"RESULT engine_decode_speedup_vs_hf_static {speedup:.2f}")
    print(f"RESULT engine_prefill_stall_ratio {stall_ratio:.2f}")


if __name__ == "__main__":
    main()
