"""FedJobs on the local backend: one detached supervisor process per job, and status from
the files its run leaves.

The supervisor (:mod:`modelfleet.federated.local_federation`) runs in a session of its own,
so it outlives an operator restart; every process of a job carries the job's uid as a
marker in its environment, which is how a later reconcile finds it, and how a delete kills
all of it. A supervisor that died without a result is started again and resumes after the
last checkpointed round; after ``MAX_LAUNCHES`` starts without a new round the job fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.backends.base import Owner
from modelfleet.backends.federation_status import observe_result, observe_rounds
from modelfleet.core.workload import ApplyResult, Observation, Workload, WorkloadState
from modelfleet.federated.checkpoint import (
    RunResult,
    read_latest_state,
    read_result,
    write_atomically,
    write_result,
)
from modelfleet.federated.job import JOB_FILE, JobSettings, read_job
from modelfleet.federated.launch import (
    JobInvalid,
    check_local_job,
    job_settings,
    local_path,
)
from modelfleet.federated.local_federation import write_sites
from modelfleet.federated.processes import MARKER_VARIABLE, find_marked_processes, stop_processes
from modelfleet.federated.progress import read_progress

LAUNCHES_FILE = "launches"
OWNER_FILE = "owner"
"""The uid of the FedJob whose run the output directory holds."""
MAX_LAUNCHES = 5
INVALID = "InvalidForLocalBackend"


def marker(owner: Owner) -> str:
    """The environment tag of every process of ``owner``'s run."""
    return f"fedjob-{owner.uid}"


def read_owner(run_dir: Path) -> tuple[str, str] | None:
    """The uid and namespace/name of the FedJob that claimed ``run_dir``, if one did."""
    try:
        uid, _, name = (run_dir / OWNER_FILE).read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    return uid, name


def claim_output(owner: Owner, run_dir: Path) -> None:
    """Make ``run_dir`` this FedJob's, unless it holds another FedJob's run: resuming or
    overwriting that would pass its rounds or its adapter off as this job's."""
    claimed = read_owner(run_dir)
    if claimed is None:
        write_atomically(run_dir / OWNER_FILE, f"{owner.uid} {owner.namespace}/{owner.name}\n")
        return
    uid, name = claimed
    if uid != owner.uid:
        raise JobInvalid(
            f"spec.output.uri: {run_dir} holds the run of FedJob {name} (uid {uid}); "
            "point spec.output.uri at a new directory, or remove that run first"
        )


def started_by(owner: Owner, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run this FedJob has started."""
    claimed = read_owner(run_dir)
    return (run_dir / JOB_FILE).is_file() and claimed is not None and claimed[0] == owner.uid


def read_launches(run_dir: Path) -> tuple[int, int]:
    """Supervisor starts so far, and the round completed when the last one started."""
    try:
        starts, at_round = (run_dir / LAUNCHES_FILE).read_text().split()
        return int(starts), int(at_round)
    except (FileNotFoundError, ValueError):
        return 0, 0


class LocalFedJobs:
    """Starts, finds, reports on and stops the local runs of FedJobs."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    @staticmethod
    def _prepare(
        owner: Owner, workload: Workload
    ) -> tuple[FedJobSpec, Path, JobSettings | None, dict[str, Path]]:
        """The spec, its run directory, the settings the run started with if it has, and
        else the clients' checked datasets.

        A run that has started owns its settings and its sites: they are not checked or
        written again, so a spec edited mid-run (or a dataset moved) cannot change a run
        that resumes after a crash."""
        spec = FedJobSpec.model_validate(workload.config)
        run_dir = local_path(spec.output.uri, "spec.output.uri")
        if started_by(owner, run_dir):
            return spec, run_dir, read_job(run_dir), {}
        run_dir, datasets = check_local_job(spec)
        claim_output(owner, run_dir)
        return spec, run_dir, None, datasets

    def apply(self, owner: Owner, workload: Workload) -> ApplyResult:
        """Start the run's supervisor unless it is running or the run has ended."""
        try:
            spec, run_dir, started, datasets = self._prepare(owner, workload)
        except JobInvalid:
            return ApplyResult.SKIPPED
        if read_result(run_dir) is not None or find_marked_processes(marker(owner)):
            return ApplyResult.UNCHANGED
        state = read_latest_state(run_dir)
        done = state.round if state is not None else 0
        starts, at_round = read_launches(run_dir)
        if starts >= MAX_LAUNCHES and done == at_round:
            write_result(
                run_dir,
                RunResult(
                    "Failed",
                    "RuntimeCrashed",
                    f"the federation was started {starts} times without completing a round "
                    f"after round {done}; see {run_dir / 'logs'}",
                ),
            )
            return ApplyResult.UNCHANGED
        if started is None:
            write_sites(run_dir, datasets)
            write_atomically(run_dir / JOB_FILE, job_settings(spec).to_json())
        write_atomically(run_dir / LAUNCHES_FILE, f"{starts + 1 if done == at_round else 1} {done}")
        self._spawn(owner, run_dir)
        return ApplyResult.CREATED if starts == 0 else ApplyResult.UPDATED

    def _spawn(self, owner: Owner, run_dir: Path) -> None:
        (run_dir / "logs").mkdir(exist_ok=True)
        environment = {**os.environ, MARKER_VARIABLE: marker(owner)}
        with (run_dir / "logs" / "supervisor.log").open("ab") as log:
            subprocess.Popen(
                [self.python, "-m", "modelfleet.federated.local_federation", str(run_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
                close_fds=True,
            )

    def observe(self, owner: Owner, workload: Workload) -> Observation:
        """The run's state from its files and whether its processes live."""
        try:
            spec, run_dir, started, _ = self._prepare(owner, workload)
        except JobInvalid as error:
            return Observation(WorkloadState.FAILED, INVALID, str(error))
        wanted = job_settings(spec)
        observed = self._observe_run(owner, run_dir, started or wanted)
        if started is not None and started.digest() != wanted.digest():
            note = (
                "; the spec changed after the run started: a FedJob keeps the spec it started "
                "with (delete it, or point spec.output.uri at a new directory, to start over "
                "with the new one)"
            )
            observed = replace(observed, message=observed.message + note)
        return observed

    @staticmethod
    def _observe_run(owner: Owner, run_dir: Path, settings: JobSettings) -> Observation:
        progress, result = read_progress(run_dir, f"file://{run_dir}")
        if result is not None:
            return observe_result(progress, result)
        if find_marked_processes(marker(owner)):
            return observe_rounds(progress, settings.rounds)
        return Observation(
            WorkloadState.PENDING,
            "Restarting",
            "the federation is not running; it is started and resumes after the last "
            "completed round",
            job_report=progress,
        )

    def delete(self, owner: Owner) -> None:
        """Kill every process of the run; its files stay with the output."""
        stop_processes([], marker(owner))
