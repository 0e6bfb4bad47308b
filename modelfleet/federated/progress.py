"""What FedJob status shows of a run, computed from the run's own files.

Both backends report through this: the local one reads the run directory itself; on a
cluster the SuperLink pod reads it from the output volume and publishes it (see
:mod:`modelfleet.federated.superlink_pod`), so the two show the same fields the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from modelfleet.federated.checkpoint import (
    ADAPTER_DIR,
    RunResult,
    RunState,
    read_latest_state,
    read_result,
)


def report(
    state: RunState | None, result: RunResult | None, run_dir: Path, output_uri: str
) -> dict[str, Any]:
    """Rounds, clients, ε, bytes, metrics, and the adapter's URI under ``output_uri`` (the
    URI the user gave for ``run_dir``) once the run has ended with one."""
    if state is None:
        return {"round": 0}
    last = state.reports[-1] if state.reports else None
    metrics = {}
    if last is not None:
        candidates = {
            "trainLoss": last.train_loss,
            "evalLoss": last.eval_loss,
            "evalAccuracy": last.eval_accuracy,
            "secondsPerRound": sum(r.seconds for r in state.reports) / len(state.reports),
            "compressionRatio": last.uncompressed_bytes / last.bytes_sent
            if last.bytes_sent
            else 1.0,
        }
        metrics = {k: round(v, 6) for k, v in candidates.items() if math.isfinite(v)}
    finished = result is not None and (run_dir / ADAPTER_DIR).is_dir()
    return {
        "round": state.round,
        "clients_reporting": len(last.clients) if last else 0,
        "epsilon_spent": last.epsilon if last else 0.0,
        "bytes_sent": state.bytes_sent,
        "metrics": metrics,
        "adapter": f"{output_uri.rstrip('/')}/{ADAPTER_DIR}" if finished else "",
    }


def read_progress(run_dir: Path, output_uri: str) -> tuple[dict[str, Any], RunResult | None]:
    """The report of the run in ``run_dir`` and its outcome, if it has ended."""
    result = read_result(run_dir)
    return report(read_latest_state(run_dir), result, run_dir, output_uri), result
