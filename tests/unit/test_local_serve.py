"""The local backend's serving helpers that need no Ray: names and background rollouts."""

from __future__ import annotations

import threading

import pytest

from modelfleet.backends.base import Owner
from modelfleet.backends.local_serve import (
    UNREACHABLE_GRACE_S,
    app_name,
    redeploy_due,
    route_prefix,
    run_in_background,
    unreachable_observation,
)
from modelfleet.core.workload import WorkloadState


def owner(namespace: str, name: str) -> Owner:
    return Owner("modelfleet.io/v1alpha1", "ModelPool", name, namespace, "uid")


def test_application_names_cannot_collide_across_namespaces() -> None:
    assert app_name(owner("a-b", "c"), "c-serve") != app_name(owner("a", "b-c"), "b-c-serve")
    assert route_prefix(owner("team", "chat")) == "/team/chat"


def test_a_policy_and_a_pool_of_one_name_answer_on_different_paths() -> None:
    policy = Owner("modelfleet.io/v1alpha1", "RoutingPolicy", "chat", "team", "uid")
    assert route_prefix(policy) == "/team/routingpolicy/chat"
    assert app_name(policy, "chat-router") != app_name(owner("team", "chat"), "chat-serve")


def test_a_rollout_reports_its_result_and_runs_on_a_daemon_thread() -> None:
    seen: list[bool] = []
    done = run_in_background(lambda: seen.append(threading.current_thread().daemon))
    assert done.result(timeout=5) is None and seen == [True]


def test_a_failed_rollout_keeps_its_error_for_the_observer() -> None:
    def fail(uri: str) -> None:
        raise ValueError(f"model uri {uri!r} is not supported")

    failed = run_in_background(fail, "hf://x")
    with pytest.raises(ValueError, match="hf://x"):
        failed.result(timeout=5)


def test_an_unreachable_application_is_redeployed_only_after_the_grace() -> None:
    """A Serve controller slow to answer must not restart a healthy pool on the first miss,
    and repeated misses must read the same, so the status is not rewritten every resync."""
    assert not redeploy_due(100.0, 100.0)
    assert not redeploy_due(100.0, 100.0 + UNREACHABLE_GRACE_S - 0.1)
    assert redeploy_due(100.0, 100.0 + UNREACHABLE_GRACE_S)
    first = unreachable_observation("ns.pool", "RayActorError", overdue=False)
    again = unreachable_observation("ns.pool", "RayActorError", overdue=False)
    assert first == again and first.reason == "ServeUnreachable"
    assert first.state is WorkloadState.UNAVAILABLE
    assert "redeploying" in unreachable_observation("ns.pool", "RayActorError", True).message
