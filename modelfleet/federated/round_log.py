"""The per-round record a federated run leaves behind, one JSON line per completed round.

The ServerApp appends a line as each round finishes and the launcher (or later a FedJob's
status writer) reads them in another process and another virtualenv, so the format is
plain JSON and lives here, importable from both sides without Flower.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

ROUNDS_FILE = "rounds.jsonl"
ADAPTER_DIR = "adapter"
"""Names under a run's output directory."""


@dataclass(frozen=True)
class RoundRecord:
    """What one round produced: who reported and how the global adapter did."""

    round: int
    train_clients: tuple[int, ...]
    """Partition ids of the clients whose training reply was aggregated."""
    evaluate_clients: tuple[int, ...]
    train_loss: float
    """Mean local training loss, weighted by each client's example count."""
    eval_loss: float
    eval_accuracy: float
    """The aggregated adapter on the clients' held-out splits, weighted the same way."""

    def to_line(self) -> str:
        """The record as one JSON line."""
        return json.dumps(asdict(self)) + "\n"


def parse_round_log(text: str) -> list[RoundRecord]:
    """The records of a ``rounds.jsonl``, in order; a malformed line names its number."""
    records: list[RoundRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            records.append(
                RoundRecord(
                    round=int(fields["round"]),
                    train_clients=tuple(int(c) for c in fields["train_clients"]),
                    evaluate_clients=tuple(int(c) for c in fields["evaluate_clients"]),
                    train_loss=float(fields["train_loss"]),
                    eval_loss=float(fields["eval_loss"]),
                    eval_accuracy=float(fields["eval_accuracy"]),
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{ROUNDS_FILE} line {number} is not a round record: {error}"
            ) from None
    return records
