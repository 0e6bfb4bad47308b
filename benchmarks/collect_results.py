"""Gather the ``RESULT <name> <value>`` lines of benchmark logs into one Markdown table.

`make bench` tees each benchmark's output to ``benchmarks/out/<name>.log`` and then runs
this, so every headline figure of one run lands in ``benchmarks/results.md`` with the date
and the machine it was measured on, without anyone copying numbers by hand.

Run: ``python benchmarks/collect_results.py benchmarks/out/*.log`` (writes
``benchmarks/results.md``; ``--output`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
from pathlib import Path

RESULT = re.compile(r"^RESULT (\S+) (\S+)$")


def read_results(log: Path) -> list[tuple[str, str]]:
    """The (name, value) pairs of one log, in order."""
    lines = log.read_text(errors="replace").splitlines()
    return [(m[1], m[2]) for line in lines if (m := RESULT.match(line.strip()))]


def describe_machine() -> str:
    """CPU model, cores and memory: enough to tell two machines' tables apart."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    meminfo = Path("/proc/meminfo")
    memory = ""
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def render(logs: list[Path]) -> str:
    """The Markdown page: one row per RESULT line, grouped by benchmark."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Gathered by `make bench` on {today}; machine: {describe_machine()}.",
        "What each figure means, and its baseline, is in `benchmarks/README.md`.",
        "",
        "| benchmark | result | value |",
        "|---|---|---|",
    ]
    for log in logs:
        results = read_results(log)
        if not results:
            lines.append(f"| {log.stem} | (no RESULT lines: did it fail?) | |")
        lines += [f"| {log.stem} | `{name}` | {value} |" for name, value in results]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, nargs="+")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results.md")
    args = parser.parse_args()
    args.output.write_text(render(args.logs))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
