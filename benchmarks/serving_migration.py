"""Migration downtime across Ray actors against sequence length: staged vs stop-and-copy.

Run: ``python benchmarks/serving_migration.py``. Every figure is a ratio against a baseline
measured in the same run; nothing is asserted.

Two engine replica actors of the tiny model on a local Ray, driven by the pool manager.
For each sequence length a request with that many prompt tokens is first run without
migration (the reference output), then prefilled on one replica and, while it decodes,
migrated to the other twice: staged (full KV blocks copied through the object store while
it keeps decoding, then a stop-and-copy of the last blocks) and plain stop-and-copy (all
blocks copied after it stopped). Every migrated run must reproduce the reference's greedy
output token for token.

Downtime runs from the request stopping on the source (at a step boundary) until the
target holds it ready to decode, and is taken apart: export on the source, transfer
(back to the manager and on to the target, through the object store), import on the
target. The wait for the step in flight when the manager asks (``step wait``) is printed
apart: that step still produces the request's token, so the request is not stalled by it.
``blocks`` shows the staged migration's blocks copied while decoding / in the final copy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from dataclasses import replace

import numpy as np
import ray
from common.bootstrap import ratio_interval
from common.result_lines import print_result

from modelfleet.api.auth import Auth, AuthMode
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


async def run_unmigrated(manager: PoolManager, prompt: list[int]) -> list[int]:
    """The reference: the same request decoded on one replica, never moved."""
    params = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0.0)
    return await tokens_of(await manager.submit(prompt, params, priority=0))


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


PARTS = ("step_wait_s", "export_s", "transfer_s", "import_s")


def summarise(reports: list[MigrationReport]) -> dict[str, float]:
    """Median downtime and median of each part, in ms."""
    keys = ("downtime_s", *PARTS)
    return {key: 1e3 * statistics.median(getattr(r, key) for r in reports) for key in keys}


async def measure(lengths: list[int], repeats: int) -> dict[int, dict[int, list[float]]]:
    """Print downtime and its parts per length for staged and stop-and-copy migration;
    return every downtime in seconds by length and staging rounds (4: staged, 0: not)."""
    longest = max(lengths) + DECODE_TOKENS + 16
    model = ServedModel(name="tiny", uri="builtin://tiny-llama", max_model_len=longest)
    spec = ModelPoolSpec(models=[model], replicas=2, auth=Auth(mode=AuthMode.NONE))
    options = ServingOptions(num_blocks=-(-longest // 16) + 8, replica_num_cpus=0.5)
    manager = PoolManager(pool_settings(model, spec, options, "migbench"))
    await manager.configure(2, migration=False, max_concurrent=2)
    print(
        f"{'tokens':>7} {'mode':>13} {'downtime':>9} {'export':>7} {'transfer':>9} "
        f"{'import':>7} {'step wait':>10}  blocks   (ms, medians of {repeats})"
    )
    downtimes: dict[int, dict[int, list[float]]] = {}
    for length in lengths:
        prompt = [(31 * i + 7) % 256 for i in range(length)]
        reference = await run_unmigrated(manager, prompt)
        reports: dict[int, list[MigrationReport]] = {4: [], 0: []}
        for _ in range(repeats):
            for rounds, mine in reports.items():
                manager.settings = replace(manager.settings, staging_rounds=rounds)
                report, tokens = await migrate_once(manager, prompt)
                assert tokens == reference, f"migration at {length} tokens changed the output"
                mine.append(report)
        for rounds, mine in reports.items():
            parts = summarise(mine)
            mode = "staged" if rounds else "stop-and-copy"
            blocks = f"{mine[-1].staged_blocks}/{mine[-1].final_blocks}"
            print(
                f"{length:7d} {mode:>13} {parts['downtime_s']:9.1f} {parts['export_s']:7.1f} "
                f"{parts['transfer_s']:9.1f} {parts['import_s']:7.1f} "
                f"{parts['step_wait_s']:10.1f}  {blocks}"
            )
        downtimes[length] = {k: [r.downtime_s for r in mine] for k, mine in reports.items()}
    await manager.shutdown()
    return downtimes


def name_length(tokens: int) -> str:
    """8192 as ``8k``, for RESULT names."""
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    downtimes = asyncio.run(measure(args.lengths, args.repeats))
    ray.shutdown()
    shortest, longest = min(downtimes), max(downtimes)
    for length, by_mode in downtimes.items():
        ratio, low, high = ratio_interval(by_mode[0], by_mode[4], np.median)
        print(
            f"{length:7d} tokens: stop-and-copy / staged downtime {ratio:.2f}x "
            f"[{low:.2f}, {high:.2f}]"
        )
    growth, low, high = ratio_interval(downtimes[longest][4], downtimes[shortest][4], np.median)
    print(
        f"staged downtime growth from {shortest} to {longest} tokens: {growth:.2f}x "
        f"[{low:.2f}, {high:.2f}] (95% bootstrap interval)"
    )
    print_result(
        f"migration_downtime_growth_{name_length(shortest)}_to_{name_length(longest)}", growth
    )
    at_longest, _, _ = ratio_interval(downtimes[longest][0], downtimes[longest][4], np.median)
    print_result(f"migration_stop_and_copy_over_staged_at_{name_length(longest)}", at_longest)


if __name__ == "__main__":
    main()
