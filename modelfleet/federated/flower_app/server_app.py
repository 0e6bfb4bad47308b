"""The ServerApp: one FedJob's rounds, checkpointed, resumed, and ended with an adapter.

It reads the job from ``job.json`` in the run directory the launcher names in the run
config, resumes after the last checkpointed round, and runs :class:`FederatedLora`'s rounds
over Flower's Grid until the job's rounds are done, the privacy budget would be exceeded, or
a round cannot close. The outcome goes to ``result.json``; the final global delta is
written as a PEFT adapter in ``adapter/``.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from modelfleet.federated.checkpoint import (
    ADAPTER_DIR,
    RunResult,
    RunState,
    discard_checkpoints,
    load_latest,
    save_round,
    write_result,
)
from modelfleet.federated.client_training import save_adapter
from modelfleet.federated.flower_app.strategy import FederatedLora, RoundFailed
from modelfleet.federated.job import JobSettings, read_job
from modelfleet.federated.privacy import Accountant
from modelfleet.federated.rounds import Delta, factorise

WORK_DIR_KEY = "work-dir"
NODE_WAIT_POLL_SECONDS = 1.0

app = ServerApp()


def resume(job: JobSettings, work_dir: Path) -> tuple[RunState, Delta]:
    """The last completed round of this job's run, or round 0 with an empty delta.

    A checkpoint of other settings (the spec changed) is not resumed."""
    loaded = load_latest(work_dir)
    if loaded is not None and loaded[0].job_digest == job.digest():
        return loaded
    discard_checkpoints(work_dir)
    accountant = Accountant.for_job(job).to_dict() if job.privacy is not None else None
    return RunState(job_digest=job.digest(), round=0, accountant=accountant), {}


def wait_for_nodes(grid: Grid, job: JobSettings) -> None:
    """Return once at least ``minClients`` SuperNodes are connected; else fail the round."""
    deadline = time.monotonic() + job.round_timeout_seconds
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= job.min_clients:
            return
        if time.monotonic() > deadline:
            raise RoundFailed(
                "ClientsMissing",
                f"only {len(nodes)} of {len(job.clients)} clients connected within "
                f"{job.round_timeout_seconds:.0f}s; spec.aggregation.minClients is "
                f"{job.min_clients}",
            )
        time.sleep(NODE_WAIT_POLL_SECONDS)


def privacy_exhausted(job: JobSettings, state: RunState) -> RunResult | None:
    """A final result when one more round would spend more than the target ε."""
    if job.privacy is None or state.accountant is None:
        return None
    accountant = Accountant.from_dict(state.accountant)
    privacy = job.privacy
    if not accountant.would_exceed(privacy.target_epsilon, privacy.target_delta):
        return None
    next_epsilon = accountant.epsilon_after(accountant.rounds + 1, privacy.target_delta)
    return RunResult(
        "Succeeded",
        "PrivacyBudgetReached",
        f"stopped after round {state.round} of {job.rounds}: round {state.round + 1} would "
        f"spend ε={next_epsilon:.3g} > targetEpsilon {privacy.target_epsilon:g} "
        f"(δ={privacy.target_delta:g}); the adapter of round {state.round} is the result",
    )


def finish(job: JobSettings, work_dir: Path, delta: Delta, result: RunResult) -> None:
    """Write the final adapter, then the result that makes the run terminal."""
    if delta:
        factors, rank = factorise(delta)
        save_adapter(job, factors, rank, work_dir / ADAPTER_DIR)
    write_result(work_dir, result)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job's remaining rounds from its last checkpoint."""
    work_dir = Path(str(context.run_config[WORK_DIR_KEY]))
    job = read_job(work_dir)
    state, delta = resume(job, work_dir)
    strategy = FederatedLora(job)
    while state.round < job.rounds:
        if (stopped := privacy_exhausted(job, state)) is not None:
            finish(job, work_dir, delta, stopped)
            return
        wait_for_nodes(grid, job)
        round_number = state.round + 1
        accountant = state.accountant
        epsilon = 0.0
        if accountant is not None and job.privacy is not None:
            spent = Accountant.from_dict(accountant).after_round()
            accountant, epsilon = spent.to_dict(), spent.epsilon(job.privacy.target_delta)
        try:
            delta, report = strategy.run_round(grid, round_number, delta, epsilon)
        except RoundFailed as failure:
            write_result(work_dir, RunResult("Failed", failure.reason, failure.message))
            return
        state = RunState(state.job_digest, round_number, accountant, (*state.reports, report))
        save_round(work_dir, state, delta)
    finish(
        job,
        work_dir,
        delta,
        RunResult("Succeeded", "RoundsCompleted", f"completed {job.rounds} round(s)"),
    )
