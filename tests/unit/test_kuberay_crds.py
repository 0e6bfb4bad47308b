"""What the kuberay backend renders is what the real KubeRay CRDs accept.

The CRDs (v1.7, in ../shared/kuberay, outside the repository) are structural schemas: the API
server silently prunes fields they do not declare, so a misspelt or misplaced field would
never reach KubeRay. The test closes every declared object (``additionalProperties: false``)
to turn pruning into a failure; the ``x-kubernetes-*`` extensions are left out.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelfleet.backends.base import Owner
from modelfleet.backends.kuberay import PLURALS, render
from modelfleet.core.workload import WorkerGroup, Workload, WorkloadKind

ROOT = Path(__file__).resolve().parents[2]


def find_kuberay_crds() -> Path:
    """``$KUBERAY_CRDS``, else ``shared/kuberay`` beside the checkout, else beside the
    checkout it was cloned from (a fresh clone elsewhere still finds them)."""
    if os.environ.get("KUBERAY_CRDS"):
        return Path(os.environ["KUBERAY_CRDS"])
    candidates = [ROOT.parent / "shared" / "kuberay"]
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and "://" not in origin and ":" not in origin.split("/")[0]:
        candidates.append(Path(origin).resolve().parent / "shared" / "kuberay")
    return next((c for c in candidates if c.is_dir()), candidates[0])


KUBERAY_CRDS = find_kuberay_crds()
pytestmark = pytest.mark.skipif(
    not KUBERAY_CRDS.is_dir(),
    reason=f"the KubeRay CRDs are not at {KUBERAY_CRDS}; set KUBERAY_CRDS to their folder",
)
OWNER = Owner("modelfleet.io/v1alpha1", "ModelPool", "pool", "team-a", "uid-1")
GROUPS = (
    WorkerGroup("g0-l4", "L4", 2, 1, (("nvidia.com/gpu.product", "L4"),)),
    WorkerGroup("g1-cpu", "cpu", 1, 0),
)
SERVICE = Workload(
    "pool-serve",
    WorkloadKind.SERVICE,
    "modelfleet.serving.app",
    {"models": [{"name": "a"}]},
    GROUPS,
    credential_secrets=("s3-creds",),
    claims=("team-models",),
    api_keys_secret="pool-keys",
)
JOB = replace(SERVICE, name="job-fed", kind=WorkloadKind.JOB, api_keys_secret="")


def closed(schema: Any) -> Any:
    """``schema`` without ``x-kubernetes-*`` keys and with every object that declares its
    properties closed to others, as pruning would drop them."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@cache
def validator(plural: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((KUBERAY_CRDS / f"ray.io_{plural}.yaml").read_text())
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("token_auth", [True, False], ids=["token-auth", "no-auth"])
@pytest.mark.parametrize("workload", [SERVICE, JOB], ids=lambda w: w.kind.value)
def test_rendered_children_validate_against_the_kuberay_crds(
    workload: Workload, token_auth: bool
) -> None:
    obj = render(OWNER, workload, "img:1", token_auth=token_auth)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(PLURALS[workload.kind]).iter_errors(obj)
    ]
    assert errors == []


def test_closing_the_schema_catches_a_misplaced_field() -> None:
    """Without the closing, this typo would pass validation and be pruned by the server."""
    obj = render(OWNER, SERVICE, "img:1")
    obj["spec"]["rayClusterConfig"]["authOption"] = {"mode": "token"}
    assert not validator("rayservices").is_valid(obj)
