"""Migration downtime across Ray actors against sequence length: staged vs stop-and-copy.

Run: ``python benchmarks/serving_migration.py``. Every figure is a ratio against a baseline
measured in the same run; nothing is asserted.

Two engine replica actors of the tiny model on a local Ray, driven by the pool manager.
For each sequence length a request with that many prompt tokens is prefilled on one
replica and, while it decodes, migrated to the other twice: staged (full KV blocks
copied through the object store while it keeps decoding, then a stop-and-copy of the
last blocks) and plain stop-and-copy (all blocks copied after it stopped). Downtime runs
from the stop on the source until the target holds the request ready to decode. Every
migration is checked to continue the greedy output token for token. ``blocks`` shows
the staged migration's blocks copied while decoding / in the final stop-and-copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from dataclasses import replace

import ray
from result_lines import print_result

from modelfleet.api.modelpool import ModelPoolSpec, ServedModel
from modelfleet.serving.frontend import ServingOptions, pool_settings
from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.manager import MigrationReport, PoolManager, Stream

DECODE_TOKENS = 200


async def tokens_of(stream: Stream) -> list[int]:
    """All tokens of a stream, in order."""
    tokens = []
    while True:
        event = await stream.events.get()
        if isinstance(event, Exception):
            raise event
        tokens.append(event.token_id)
        if event.finished:
            return tokens


async def migrate_once(
    manager: PoolManager, prompt: list[int]
) -> tuple[MigrationReport, list[int]]:
    """Migrate a decoding request of ``len(prompt)`` tokens; the report and its tokens."""
    params = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0.0)
    stream = await manager.submit(prompt, params, priority=0)
    first = await stream.events.get()
    assert not isinstance(first, Exception)
    report = await manager.migrate(stream.request_id)
    assert report is not None and not report.recomputed, "the request finished too early"
    return report, [first.token_id, *await tokens_of(stream)]


async def measure(lengths: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """Print downtime per length for staged and stop-and-copy migration; return the
    median (staged, stop-and-copy) downtime in seconds by length."""
    longest = max(lengths) + DECODE_TOKENS + 16
    model = ServedModel(name="tiny", uri="builtin://tiny-llama", max_model_len=longest)
    spec = ModelPoolSpec(models=[model], replicas=2)
    options = ServingOptions(num_blocks=-(-longest // 16) + 8, replica_num_cpus=0.5)
    manager = PoolManager(pool_settings(model, spec, options, "migbench"))
    await manager.configure(2, migration=False, max_concurrent=2)
    print(f"{'tokens':>7} {'staged ms':>10} {'stop-and-copy ms':>17} {'ratio':>7}  blocks")
    medians = {}
    for length in lengths:
        prompt = [(31 * i + 7) % 256 for i in range(length)]
        downtimes: dict[int, list[float]] = {4: [], 0: []}
        outputs = set()
        blocks = ""
        for _ in range(repeats):
            for rounds in downtimes:
                manager.settings = replace(manager.settings, staging_rounds=rounds)
                report, tokens = await migrate_once(manager, prompt)
                downtimes[rounds].append(report.downtime_s)
                outputs.add(tuple(tokens))
                if rounds:
                    blocks = f"{report.staged_blocks}/{report.final_blocks}"
        assert len(outputs) == 1, "a migration changed the output"
        staged, full = (statistics.median(downtimes[r]) for r in (4, 0))
        ratio = full / staged
        medians[length] = (staged, full)
        print(f"{length:7d} {staged * 1e3:10.1f} {full * 1e3:17.1f} {ratio:6.1f}x  {blocks}")
    await manager.shutdown()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    medians = asyncio.run(measure(args.lengths, args.repeats))
    ray.shutdown()
    shortest, longest = min(medians), max(medians)
    print_result(
        f"migration_downtime_growth_{shortest}_to_{longest}",
        medians[longest][0] / medians[shortest][0],
    )
    staged, full = medians[longest]
    print_result(f"migration_stop_and_copy_over_staged_at_{longest}", full / staged)


if __name__ == "__main__":
    main()
