"""What the kuberay backend renders is what the real KubeRay CRDs accept.

The CRDs (v1.7, in ../shared/kuberay, outside the repository) are structural schemas: the API
server silently prunes fields they do not declare, so a misspelt or misplaced field would
never reach KubeRay. The test closes every declared object (``additionalProperties: false``)
to turn pruning into a failure; the ``x-kubernetes-*`` extensions are left out.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import jsonschema
import pytest

from modelfleet.backends.kuberay import PLURALS, render
from modelfleet.core.workload import Workload
from tests.kuberay_crds import JOB, KUBERAY_CRDS, NOT_FOUND, OWNER, SERVICE, closed, crd_schema
from tests.unit.ray_pods import every_override

pytestmark = pytest.mark.skipif(not KUBERAY_CRDS.is_dir(), reason=NOT_FOUND)


@cache
def validator(plural: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(closed(crd_schema(plural)))


def schema_errors(workload: Workload, obj: dict[str, Any]) -> list[str]:
    """Where and why ``obj`` (a rendered child of ``workload``) breaks KubeRay's schema."""
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(PLURALS[workload.kind]).iter_errors(obj)
    ]


@pytest.mark.parametrize("token_auth", [True, False], ids=["token-auth", "no-auth"])
@pytest.mark.parametrize("workload", [SERVICE, JOB], ids=lambda w: w.kind.value)
def test_rendered_children_validate_against_the_kuberay_crds(
    workload: Workload, token_auth: bool
) -> None:
    obj = render(OWNER, workload, "img:1", token_auth=token_auth)
    assert schema_errors(workload, obj) == []


@pytest.mark.parametrize("workload", [SERVICE, JOB], ids=lambda w: w.kind.value)
def test_children_with_every_pod_override_validate_against_the_kuberay_crds(
    workload: Workload,
) -> None:
    """Tolerations, the merged affinity, the service account, pull secrets, resources and
    the credentials Secret all sit where KubeRay's pod templates declare them."""
    obj = render(OWNER, replace(workload, pod=every_override()), "img:1")
    assert schema_errors(workload, obj) == []


def test_closing_the_schema_catches_a_misplaced_field() -> None:
    """Without the closing, this typo would pass validation and be pruned by the server."""
    obj = render(OWNER, SERVICE, "img:1")
    obj["spec"]["rayClusterConfig"]["authOption"] = {"mode": "token"}
    assert not validator("rayservices").is_valid(obj)
