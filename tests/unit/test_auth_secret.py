"""What the operator says about a spec's API keys before it deploys an endpoint."""

from __future__ import annotations

from collections.abc import Mapping

from controllers.reconcile import EventReason
from controllers.secrets import AUTH_SECRET_EMPTY, AUTH_SECRET_NOT_FOUND, check_auth_secret
from controllers.workloads import apply_events
from modelfleet.core.workload import ApplyResult, Workload, WorkloadKind

SECRETS: dict[tuple[str, str], Mapping[str, str]] = {
    ("team", "keys"): {"team-a": "sk-1"},
    ("team", "blank"): {"team-a": " \n"},
}


def read(namespace: str, name: str) -> Mapping[str, str] | None:
    return SECRETS.get((namespace, name))


def test_a_missing_secret_is_named_with_the_command_that_creates_it() -> None:
    blocked = check_auth_secret(read, "team", "nope")
    assert blocked is not None and blocked.reason == AUTH_SECRET_NOT_FOUND
    assert "Secret 'nope' does not exist in namespace 'team'" in blocked.message
    assert "kubectl create secret generic nope -n team" in blocked.message


def test_a_secret_without_a_key_is_refused_and_a_good_one_passes() -> None:
    blank = check_auth_secret(read, "team", "blank")
    assert blank is not None and blank.reason == AUTH_SECRET_EMPTY
    assert check_auth_secret(read, "team", "keys") is None
    assert check_auth_secret(read, "team", "") is None, "mode None names no Secret"


def service(keys: str) -> Workload:
    return Workload("p-serve", WorkloadKind.SERVICE, "m", {}, (), api_keys_secret=keys)


def test_an_open_endpoint_on_a_cluster_is_a_warning_once_per_rollout() -> None:
    events = apply_events(ApplyResult.CREATED, service(""), "kuberay")
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "WorkloadCreated"),
        ("Warning", EventReason.AUTH_DISABLED),
    ]
    assert apply_events(ApplyResult.UNCHANGED, service(""), "kuberay") == []
    assert len(apply_events(ApplyResult.UPDATED, service("keys"), "kuberay")) == 1
    assert len(apply_events(ApplyResult.CREATED, service(""), "local")) == 1
