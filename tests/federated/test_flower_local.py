"""A real local federation on Flower's deployment engine: a SuperLink and three SuperNodes
of ranks 4, 8 and 16 as processes on loopback, FLoRA over their adapters with
differential privacy, a SuperLink killed mid-run, and the run resumed from its checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from peft import PeftModel

from modelfleet.federated.checkpoint import ADAPTER_DIR, read_latest_state, read_result
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.job import (
    JOB_FILE,
    ClientSettings,
    JobSettings,
    Method,
    PrivacySettings,
)
from modelfleet.federated.local_federation import run_federation, write_sites
from modelfleet.federated.privacy import Accountant
from modelfleet.federated.processes import MARKER_VARIABLE, find_marked_processes
from modelfleet.zoo import load_model

BASE_MODEL = "qwen-tiny"
SKILLS = ("reversal", "sorting", "maximum")
RANKS = (4, 8, 16)
NOISE = 2.0
DELTA = 1e-5
MARKER = "test-flower-local"


def target_epsilon_for_two_rounds() -> float:
    """A budget that two rounds fit and a third would exceed."""
    accountant = Accountant(NOISE, 1.0)
    return (accountant.epsilon_after(2, DELTA) + accountant.epsilon_after(3, DELTA)) / 2


def prepare_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    datasets = {
        f"site-{index}": write_site_dataset(
            tmp_path / f"site-{index}", skill, SKILLS, index, 200, 10
        )
        for index, skill in enumerate(SKILLS)
    }
    job = JobSettings(
        base_model=BASE_MODEL,
        alpha=16.0,
        dropout=0.0,
        target_modules=("q_proj", "v_proj"),
        clients=tuple(
            ClientSettings(name, rank, 1.0) for name, rank in zip(datasets, RANKS, strict=True)
        ),
        rounds=3,
        local_steps=2,
        method=Method.FLORA,
        min_clients=3,
        client_fraction=1.0,
        privacy=PrivacySettings(1.0, NOISE, target_epsilon_for_two_rounds(), DELTA),
        eval_examples=10,
    )
    (run_dir / JOB_FILE).write_text(job.to_json())
    write_sites(run_dir, datasets)
    return run_dir


def kill_superlink_after_round_one(run_dir: Path, stop: threading.Event) -> list[int]:
    """Wait for round 1's checkpoint, then SIGKILL the SuperLink; the pids killed."""
    killed: list[int] = []
    while not stop.wait(0.5):
        state = read_latest_state(run_dir)
        if state is None or state.round < 1:
            continue
        for pid in find_marked_processes(MARKER):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"flower-superlink" in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed
    return killed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_federation_resumes_and_stops_before_the_privacy_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MARKER_VARIABLE, MARKER)
    run_dir = prepare_run(tmp_path)
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(
        target=lambda: killed.extend(kill_superlink_after_round_one(run_dir, stop))
    )
    killer.start()
    try:
        with pytest.raises(RuntimeError):
            run_federation(run_dir, timeout=600)
    finally:
        stop.set()
        killer.join()
    assert killed, "the SuperLink was never killed"
    assert find_marked_processes(MARKER) == []
    interrupted = read_latest_state(run_dir)
    assert interrupted is not None and interrupted.round >= 1
    assert read_result(run_dir) is None

    result = run_federation(run_dir, timeout=600)

    assert (result.phase, result.reason) == ("Succeeded", "PrivacyBudgetReached")
    assert "stopped after round 2 of 3" in result.message
    state = read_latest_state(run_dir)
    assert state is not None and state.accountant is not None
    assert [report.round for report in state.reports] == [1, 2], "a round redone or skipped"
    assert Accountant.from_dict(state.accountant).rounds == 2
    epsilons = [report.epsilon for report in state.reports]
    assert 0 < epsilons[0] < epsilons[1] <= target_epsilon_for_two_rounds()
    for report in state.reports:
        assert report.clients == ("site-0", "site-1", "site-2") and not report.dropped
        assert report.bytes_sent == report.uncompressed_bytes > 0
    assert find_marked_processes(MARKER) == []

    adapter = PeftModel.from_pretrained(load_model(BASE_MODEL)[0], run_dir / ADAPTER_DIR)
    assert adapter.peft_config["default"].r >= max(RANKS)
