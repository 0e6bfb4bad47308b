"""The Kubernetes "restricted" Pod Security Standard, checked on a pod spec without a cluster.

``restricted_violations`` applies the rules of the restricted profile (which includes the
baseline one) that a pod spec shows statically, for Linux pods, as the API server's
PodSecurity admission does with ``pod-security.kubernetes.io/enforce: restricted``: tests
run it on every pod the operator and the chart render, so a namespace that enforces the
profile admits them. AppArmor annotations and the Windows exemptions are not covered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_syncookies",
    }
)
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")


def _containers(pod_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``containers[i] (name)``, container) of every container kind in the pod."""
    for field in CONTAINER_FIELDS:
        for index, container in enumerate(pod_spec.get(field) or []):
            yield f"{field}[{index}] ({container.get('name', '?')})", container


def _selinux_violations(where: str, options: dict[str, Any] | None) -> list[str]:
    if not options:
        return []
    found = []
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        found.append(f"{where}: seLinuxOptions.type {options['type']!r} is not allowed")
    found += [
        f"{where}: seLinuxOptions.{key} must be unset"
        for key in ("user", "role")
        if options.get(key)
    ]
    return found


def _container_violations(
    where: str, container: dict[str, Any], pod_security: dict[str, Any]
) -> list[str]:
    security = container.get("securityContext") or {}
    found = []
    if security.get("privileged"):
        found.append(f"{where}: privileged")
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation must be false")
    capabilities = security.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        found.append(f"{where}: capabilities must drop ALL")
    added = set(capabilities.get("add") or []) - ALLOWED_ADDED_CAPABILITIES
    if added:
        found.append(f"{where}: capabilities may add only NET_BIND_SERVICE, not {sorted(added)}")
    # The container's own setting wins over the pod's.
    non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if non_root is not True:
        found.append(f"{where}: runAsNonRoot must be true (on the container or the pod)")
    if security.get("runAsUser") == 0:
        found.append(f"{where}: runAsUser must not be 0")
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get(
        "type"
    )
    if seccomp not in ALLOWED_SECCOMP:
        found.append(
            f"{where}: seccompProfile.type must be RuntimeDefault or Localhost "
            f"(on the container or the pod), not {seccomp!r}"
        )
    if security.get("procMount", "Default") != "Default":
        found.append(f"{where}: procMount must be Default")
    found += _selinux_violations(where, security.get("seLinuxOptions"))
    found += [
        f"{where}: hostPort {port['hostPort']} is not allowed"
        for port in container.get("ports") or []
        if port.get("hostPort")
    ]
    return found


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Why ``pod_spec`` (a PodSpec as a dict) breaks the restricted profile; empty if it
    does not."""
    pod_security = pod_spec.get("securityContext") or {}
    found = [
        f"pod: {field} must be false"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if pod_spec.get(field)
    ]
    if pod_security.get("runAsUser") == 0:
        found.append("pod: runAsUser must not be 0")
    if pod_security.get("runAsNonRoot") is False:
        found.append("pod: runAsNonRoot must not be false")
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        found.append(f"pod: seccompProfile.type {pod_seccomp!r} is not allowed")
    found += _selinux_violations("pod", pod_security.get("seLinuxOptions"))
    found += [
        f"pod: sysctl {sysctl.get('name')!r} is not in the safe set"
        for sysctl in pod_security.get("sysctls") or []
        if sysctl.get("name") not in SAFE_SYSCTLS
    ]
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            found.append(
                f"volume {volume.get('name')!r}: type {sorted(kinds - ALLOWED_VOLUME_TYPES)} "
                "is not allowed"
            )
    for where, container in _containers(pod_spec):
        found += _container_violations(where, container, pod_security)
    return found
