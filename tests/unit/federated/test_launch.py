"""What the local backend checks of a FedJob before anything starts, and the settings the
run gets: every refusal names the field (and the client) to fix."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from modelfleet.api.fedjob import FedJobSpec
from modelfleet.backends.base import Owner
from modelfleet.backends.local_fedjobs import LocalFedJobs, claim_output, marker
from modelfleet.core.workload import ApplyResult, Workload, WorkloadState
from modelfleet.federated.datasets import write_site_dataset
from modelfleet.federated.job import CompressionSettings, Method, PrivacySettings, read_job
from modelfleet.federated.launch import JobInvalid, check_local_job, job_settings
from modelfleet.federated.local_federation import read_sites
from modelfleet.federated.plan import plan_fedjob
from modelfleet.federated.processes import find_marked_processes


def spec(tmp_path: Path, **fields: Any) -> FedJobSpec:
    """A FedJob of three clients of ranks 4, 8 and the default 16 on zoo://qwen-tiny, whose
    datasets exist under ``tmp_path``; ``fields`` replace spec fields."""
    clients = []
    for name, rank in (("a", 4), ("b", 8), ("c", None)):
        site = write_site_dataset(tmp_path / name, "sorting", ("sorting",), 0, 4, 2)
        clients.append({"name": name, "datasetUri": f"file://{site}", "rank": rank})
    body = {
        "baseModel": {"uri": "zoo://qwen-tiny"},
        "adapter": {"rank": 16},
        "clients": clients,
        "output": {"uri": f"file://{tmp_path / 'out'}"},
        **fields,
    }
    return FedJobSpec.model_validate(body)


def test_a_valid_job_yields_its_run_directory_and_each_clients_own_dataset(
    tmp_path: Path,
) -> None:
    run_dir, datasets = check_local_job(spec(tmp_path))
    assert run_dir == tmp_path / "out" and run_dir.is_dir()
    assert datasets == {name: tmp_path / name for name in "abc"}


def test_settings_carry_ranks_weights_and_only_the_features_asked_for(tmp_path: Path) -> None:
    plain = job_settings(spec(tmp_path))
    assert plain.base_model == "qwen-tiny"
    assert [(c.name, c.rank, c.weight) for c in plain.clients] == [
        ("a", 4, 1.0),
        ("b", 8, 1.0),
        ("c", 16, 1.0),
    ]
    assert plain.method is Method.FLORA and plain.privacy is None and plain.compression is None
    private = job_settings(
        spec(
            tmp_path,
            privacy={"differentialPrivacy": {"enabled": True, "noiseMultiplier": 0.7}},
            compression={"sparsity": 0.5, "quantization": "Ternary"},
        )
    )
    assert private.privacy == PrivacySettings(1.0, 0.7, 8.0, 1e-5)
    assert private.compression == CompressionSettings(0.5, "Ternary")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"baseModel": {"uri": "s3://models/base"}}, "spec.baseModel.uri: the FedJob runtime"),
        ({"baseModel": {"uri": "zoo://no-such"}}, "zoo://qwen-tiny"),
        (
            {"adapter": {"rank": 16, "targetModules": ["q_proj", "w_proj"]}},
            "spec.adapter.targetModules: qwen-tiny has no linear layers named ['w_proj']",
        ),
        (
            {"adapter": {"rank": 64}},
            "spec.clients[2].rank (c) is 64, larger than the narrowest adapted layer of "
            "qwen-tiny (32)",
        ),
        ({"output": {"uri": "s3://bucket/out"}}, "spec.output.uri: the local backend"),
        (
            {"baseModel": {"uri": "zoo://qwen-tiny", "family": "Llama"}},
            "spec.baseModel.family: zoo://qwen-tiny is a Qwen model, not Llama",
        ),
    ],
)
def test_a_job_this_machine_cannot_run_is_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobInvalid) as refused:
        check_local_job(spec(tmp_path, **fields))
    assert message in str(refused.value)
    assert not (tmp_path / "out").exists() or fields.get("output") is None


def test_a_missing_dataset_names_the_client_and_nothing_is_created(tmp_path: Path) -> None:
    job = spec(tmp_path)
    (tmp_path / "b" / "heldout.jsonl").unlink()
    with pytest.raises(JobInvalid, match=r"spec.clients\[1\].datasetUri \(b\): .*lacks"):
        check_local_job(job)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(JobInvalid, match=r"spec\.output\.uri: cannot create"):
        check_local_job(spec(tmp_path, output={"uri": f"file://{tmp_path / 'file' / 'out'}"}))


def test_an_output_holding_another_fedjobs_run_is_not_taken_over(tmp_path: Path) -> None:
    first = Owner("modelfleet.io/v1alpha1", "FedJob", "first", "ns", "uid-1")
    claim_output(first, tmp_path)
    claim_output(first, tmp_path)
    second = Owner("modelfleet.io/v1alpha1", "FedJob", "second", "ns", "uid-2")
    with pytest.raises(JobInvalid, match="holds the run of FedJob ns/first"):
        claim_output(second, tmp_path)


def test_a_started_run_keeps_the_spec_it_started_with(tmp_path: Path) -> None:
    """The supervisor here is ``true``, which exits at once: each apply finds the run
    stopped and starts it again, as after a crash, without rewriting its settings."""
    owner = Owner("modelfleet.io/v1alpha1", "FedJob", "job", "ns", "uid-started")
    fedjobs = LocalFedJobs(python=shutil.which("true") or "/bin/true")
    first = plan_fedjob("job", spec(tmp_path), None)
    assert isinstance(first, Workload)
    assert fedjobs.apply(owner, first) is ApplyResult.CREATED
    run_dir = tmp_path / "out"
    assert read_job(run_dir) == job_settings(spec(tmp_path))
    assert set(read_sites(run_dir)) == {"a", "b", "c"}

    edited = plan_fedjob("job", spec(tmp_path, rounds=7), None)
    assert isinstance(edited, Workload)
    wait_until_stopped(owner)
    (tmp_path / "a" / "train.jsonl").unlink()
    assert fedjobs.apply(owner, edited) is ApplyResult.UPDATED
    assert read_job(run_dir).rounds == 10
    seen = fedjobs.observe(owner, edited)
    assert "a FedJob keeps the spec it started with" in seen.message
    assert "round 1 of 10" in seen.message or seen.reason == "Restarting"

    stranger = Owner("modelfleet.io/v1alpha1", "FedJob", "other", "ns", "uid-other")
    refused = fedjobs.observe(stranger, edited)
    assert (refused.state, refused.reason) == (WorkloadState.FAILED, "InvalidForLocalBackend")
    fedjobs.delete(owner)


def wait_until_stopped(owner: Owner) -> None:
    deadline = time.monotonic() + 10
    while find_marked_processes(marker(owner)) and time.monotonic() < deadline:
        time.sleep(0.05)
