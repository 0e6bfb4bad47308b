"""What the tests of the Ray pods the KubeRay backend renders share: a ``spec.pod`` that
sets every override, so the rendering, KubeRay schema and Pod Security tests all check the
same, fullest case, and the way to find every pod template of a child."""

from __future__ import annotations

from typing import Any

from modelfleet.api.pods import PodOverrides

USER_NODE_EXPRESSION = {"key": "pool", "operator": "In", "values": ["ml"]}
ZONE_EXPRESSION = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a"]}
ANTI_AFFINITY = {
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {
            "weight": 50,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"team": "ml"}},
                "topologyKey": "kubernetes.io/hostname",
            },
        }
    ]
}
EVERY_OVERRIDE: dict[str, Any] = {
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 120},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [USER_NODE_EXPRESSION]},
                    {"matchExpressions": [ZONE_EXPRESSION]},
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [ZONE_EXPRESSION]}}
            ],
        },
        "podAntiAffinity": ANTI_AFFINITY,
    },
    "serviceAccountName": "ray-runner",
    "imagePullSecrets": ["registry-a", "registry-b"],
    "resources": {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "8", "memory": "32Gi"},
    },
    "credentialsSecret": "hub-creds",
}
"""Every field of ``spec.pod`` set, as a manifest writes it."""


def every_override() -> PodOverrides:
    """:data:`EVERY_OVERRIDE` as the planners pass it on."""
    return PodOverrides.model_validate(EVERY_OVERRIDE)


def templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of a rendered RayJob or RayService: head, workers, submitter."""
    cluster = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
    found = [cluster["headGroupSpec"]["template"]]
    found += [group["template"] for group in cluster["workerGroupSpecs"]]
    if "submitterPodTemplate" in obj["spec"]:
        found.append(obj["spec"]["submitterPodTemplate"])
    return found
