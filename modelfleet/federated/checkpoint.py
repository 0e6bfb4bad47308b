"""A federated run's durable state: one checkpoint per completed round, and its outcome.

Layout under the run's directory::

    checkpoints/round-0003/state.json       round, accountant, bytes, per-round records
    checkpoints/round-0003/delta.safetensors the global delta after that round
    checkpoints/LATEST                       "round-0003", replaced atomically
    result.json                              written once, when the run ends

A round's directory is complete before ``LATEST`` names it, so a process killed at any line
leaves either the previous round or the new one, never half of one: the ServerApp resumes
after ``LATEST`` and the operator reports from it. The files are plain JSON and safetensors
so both virtualenvs read them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    # Only a type here: the operator reads checkpoints' JSON without the aggregation code.
    from modelfleet.federated.rounds import Delta

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
STATE_FILE = "state.json"
DELTA_FILE = "delta.safetensors"
RESULT_FILE = "result.json"
ADAPTER_DIR = "adapter"
KEEP_CHECKPOINTS = 2
"""Older round directories are removed once a newer one is in place."""


@dataclass(frozen=True)
class RoundReport:
    """What status shows of one completed round."""

    round: int
    clients: tuple[str, ...]
    """Clients whose updates were aggregated."""
    dropped: tuple[str, ...]
    """Clients asked this round that failed or missed the deadline."""
    bytes_sent: int
    """Upload bytes of this round, as encoded on the wire."""
    uncompressed_bytes: int
    """What the same uploads would be as float32 factors."""
    epsilon: float
    train_loss: float
    eval_loss: float
    eval_accuracy: float
    seconds: float


@dataclass(frozen=True)
class RunState:
    """Everything needed to continue after the last completed round."""

    job_digest: str
    round: int
    accountant: dict[str, float | int] | None
    reports: tuple[RoundReport, ...] = field(default_factory=tuple)

    @property
    def bytes_sent(self) -> int:
        """Upload bytes of all rounds so far."""
        return sum(report.bytes_sent for report in self.reports)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunState:
        fields: dict[str, Any] = json.loads(text)
        reports = tuple(
            RoundReport(**{**r, "clients": tuple(r["clients"]), "dropped": tuple(r["dropped"])})
            for r in fields.pop("reports")
        )
        return cls(**fields, reports=reports)


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``Succeeded`` or ``Failed``, a CamelCase reason and a message."""

    phase: str
    reason: str
    message: str

    def to_json(self) -> str:
        return json.dumps(asdict(self)) + "\n"


def save_round(work_dir: Path, state: RunState, delta: Delta) -> None:
    """Write round ``state.round`` completely, then point ``LATEST`` at it. (safetensors
    is imported by the two functions that need it: the operator reads only the JSON.)"""
    from safetensors.numpy import save_file

    root = work_dir / CHECKPOINTS
    name = f"round-{state.round:04d}"
    staging = root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(
        {layer: np.ascontiguousarray(v, np.float32) for layer, v in delta.items()},
        str(staging / DELTA_FILE),
    )
    (staging / STATE_FILE).write_text(state.to_json())
    target = root / name
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    write_atomically(root / LATEST, name)
    older = sorted(
        (int(path.name.removeprefix("round-")), path)
        for path in root.glob("round-*")
        if path.name.removeprefix("round-").isdigit() and path != target
    )
    for _, old in older[: max(0, len(older) - (KEEP_CHECKPOINTS - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def discard_checkpoints(work_dir: Path) -> None:
    """Remove every checkpoint: they belong to settings the run no longer has."""
    shutil.rmtree(work_dir / CHECKPOINTS, ignore_errors=True)


def load_latest(work_dir: Path) -> tuple[RunState, Delta] | None:
    """The last completed round's state and delta, or None before the first."""
    from safetensors.numpy import load_file

    directory = _latest_dir(work_dir)
    if directory is None:
        return None
    state = RunState.from_json((directory / STATE_FILE).read_text())
    delta = {
        layer: v.astype(np.float64) for layer, v in load_file(str(directory / DELTA_FILE)).items()
    }
    return state, delta


def read_latest_state(work_dir: Path) -> RunState | None:
    """The last completed round's state without its delta (what the operator reports)."""
    directory = _latest_dir(work_dir)
    if directory is None:
        return None
    return RunState.from_json((directory / STATE_FILE).read_text())


def write_result(work_dir: Path, result: RunResult) -> None:
    """Record how the run ended; the outcome is final, so it is written only once."""
    if read_result(work_dir) is None:
        write_atomically(work_dir / RESULT_FILE, result.to_json())


def read_result(work_dir: Path) -> RunResult | None:
    try:
        return RunResult(**json.loads((work_dir / RESULT_FILE).read_text()))
    except FileNotFoundError:
        return None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _latest_dir(work_dir: Path) -> Path | None:
    try:
        name = (work_dir / CHECKPOINTS / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return work_dir / CHECKPOINTS / name
