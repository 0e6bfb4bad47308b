"""The restricted Pod Security Standard checker: what it must reject, and what it admits."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelfleet.backends.base import Owner
from modelfleet.backends.kuberay import WORKLOAD_LABEL, render
from modelfleet.core.pod_security import restricted_violations
from modelfleet.core.workload import WorkerGroup, Workload, WorkloadKind
from tests.unit.ray_pods import every_override, templates

RESTRICTED: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "image": "app:1",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        }
    ],
    "volumes": [{"name": "keys", "secret": {"secretName": "keys"}}],
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """RESTRICTED with the dotted ``path`` (list indices as numbers) set to ``value``."""
    pod = copy.deepcopy(RESTRICTED)
    *parents, last = path.split(".")
    target: Any = pod
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    target[last] = value
    return pod


def test_a_restricted_pod_passes() -> None:
    assert restricted_violations(RESTRICTED) == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("hostNetwork", True, "hostNetwork"),
        ("hostPID", True, "hostPID"),
        ("hostIPC", True, "hostIPC"),
        ("volumes", [{"name": "root", "hostPath": {"path": "/"}}], "'hostPath'"),
        ("volumes", [{"name": "nfs", "nfs": {"server": "x", "path": "/"}}], "'nfs'"),
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "allowPrivilege"),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop ALL"),
        (
            "containers.0.securityContext.capabilities",
            {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
            "SYS_ADMIN",
        ),
        ("securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("containers.0.securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("securityContext.runAsUser", 0, "runAsUser"),
        ("containers.0.securityContext.runAsUser", 0, "runAsUser"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
        ("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "sysctl"),
    ],
)
def test_each_rule_rejects_its_breach(path: str, value: Any, message: str) -> None:
    found = restricted_violations(changed(path, value))
    assert found and any(message in f for f in found), found


def test_every_container_kind_is_checked_and_settings_may_sit_on_the_container() -> None:
    """Init and ephemeral containers run in the pod too; runAsNonRoot and seccomp count
    on either level, the container's winning."""
    pod = copy.deepcopy(RESTRICTED)
    pod["initContainers"] = [{"name": "init", "image": "app:1"}]
    assert any(f.startswith("initContainers[0] (init)") for f in restricted_violations(pod))

    per_container = copy.deepcopy(RESTRICTED)
    del per_container["securityContext"]
    assert len(restricted_violations(per_container)) == 2  # runAsNonRoot, seccomp
    per_container["containers"][0]["securityContext"] |= {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "app.json"},
    }
    assert restricted_violations(per_container) == []


def test_a_privileged_host_path_pod_lists_every_breach() -> None:
    pod = {
        "hostNetwork": True,
        "containers": [
            {"name": "debug", "image": "busybox", "securityContext": {"privileged": True}}
        ],
        "volumes": [{"name": "host", "hostPath": {"path": "/var/run"}}],
    }
    found = restricted_violations(pod)
    for message in (
        "hostNetwork",
        "privileged",
        "hostPath",
        "allowPrivilegeEscalation",
        "drop ALL",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert any(message in f for f in found), (message, found)


@pytest.mark.parametrize("kind", list(WorkloadKind))
def test_pod_overrides_keep_the_ray_pods_restricted_and_labelled(kind: WorkloadKind) -> None:
    """Every ``spec.pod`` field set, on head, GPU and CPU workers and a job's submitter:
    namespaces enforcing the restricted profile still admit the pods, and the workload's
    NetworkPolicy still selects them."""
    groups = (WorkerGroup("g0-l4", "L4", 1, 1), WorkerGroup("g1-cpu", "cpu", 1, 0))
    workload = Workload("w", kind, "app", {}, groups, claims=("data",), pod=every_override())
    owner = Owner("modelfleet.io/v1alpha1", "FedJob", "w", "team-a", "uid-1")
    rendered = templates(render(owner, workload, "img:1"))
    assert len(rendered) == 1 + len(groups) + (kind is WorkloadKind.JOB)
    for template in rendered:
        assert template["spec"]["serviceAccountName"] == "ray-runner"
        assert template["metadata"]["labels"] == {WORKLOAD_LABEL: "w"}
        assert restricted_violations(template["spec"]) == []
