"""The validating admission webhook: reject bad specs up front with the model's message."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from controllers import metrics
from controllers.routingpolicy import observe_pools
from modelfleet.api.errors import format_validation_error
from modelfleet.api.registry import KINDS, KindInfo
from modelfleet.api.routingpolicy import RoutingPolicySpec
from modelfleet.routing.plan import MISSING_POOL, unresolved_targets

log = logging.getLogger(__name__)


def check_targets(spec: BaseModel, namespace: str, old: dict[str, Any]) -> str | None:
    """Why a RoutingPolicy's new targets cannot be routed to, naming the field; ``None`` if
    they can (or the pools cannot be read: the controller reports it then).

    Targets the stored spec already had are not checked again: a pool deleted since must
    not make every later edit of the policy (or the removal of its finalizer) fail.
    """
    assert isinstance(spec, RoutingPolicySpec)
    known = {(t.get("pool"), t.get("model")) for t in old.get("targets") or []}
    if all((t.pool, t.model) in known for t in spec.targets):
        return None
    try:
        pools = observe_pools(namespace)
    except ApiException as error:
        log.warning("could not list ModelPools to check a RoutingPolicy: %s", error.reason)
        return None
    unresolved = unresolved_targets(spec, pools)
    for index, target in enumerate(spec.targets):
        why = unresolved.get(target.name)
        if (target.pool, target.model) in known or why is None:
            continue
        if why == MISSING_POOL:
            return (
                f"spec.targets[{index}].pool: ModelPool {target.pool!r} does not exist in "
                f"namespace {namespace!r}; create the pool first or fix the name"
            )
        return (
            f"spec.targets[{index}].model: ModelPool {target.pool!r} serves "
            f"{sorted(pools[target.pool].models)}, not {target.model!r}"
        )
    return None


REFERENCE_CHECKS: dict[str, Callable[[BaseModel, str, dict[str, Any]], str | None]] = {
    "RoutingPolicy": check_targets
}
"""Checks of what a spec refers to, beyond its own validity."""


def leaves_spec_alone(body: kopf.Body | None, old: kopf.Body | None) -> bool:
    """Whether an UPDATE needs no validation: the spec is what was already stored (a status,
    label or finalizer change), or the object is being deleted.

    Validating those would let an object that a newer operator finds invalid never lose
    its finalizer, so its delete would hang.
    """
    if body is None or old is None:
        return False
    deleting = (body.get("metadata") or {}).get("deletionTimestamp") is not None
    return deleting or dict(body.get("spec") or {}) == dict(old.get("spec") or {})


def _validator(info: KindInfo) -> Any:
    def validate(
        spec: kopf.Spec,
        namespace: str | None = None,
        old: kopf.Body | None = None,
        body: kopf.Body | None = None,
        **_: Any,
    ) -> None:
        if leaves_spec_alone(body, old):
            return
        try:
            parsed = info.spec_model.model_validate(dict(spec))
        except ValidationError as error:
            metrics.ADMISSION_REVIEWS.labels(kind=info.kind, allowed="false").inc()
            raise kopf.AdmissionError(
                f"{info.kind} rejected: {format_validation_error(error)}", code=422
            ) from error
        check = REFERENCE_CHECKS.get(info.kind)
        stored = dict(old.get("spec") or {}) if old is not None else {}
        problem = None if check is None else check(parsed, namespace or "default", stored)
        if problem is not None:
            metrics.ADMISSION_REVIEWS.labels(kind=info.kind, allowed="false").inc()
            raise kopf.AdmissionError(f"{info.kind} rejected: {problem}", code=422)
        metrics.ADMISSION_REVIEWS.labels(kind=info.kind, allowed="true").inc()

    return validate


def _counting_errors(kind: str, validate: Callable[..., None]) -> Callable[..., None]:
    """Count the reviews whose validation raised instead of giving a verdict: kopf then
    admits the object (ignore_failures), so only this counter shows the check is broken."""

    @functools.wraps(validate)
    def counted(**kwargs: Any) -> None:
        try:
            validate(**kwargs)
        except kopf.AdmissionError:
            raise
        except Exception as error:
            metrics.ADMISSION_ERRORS.labels(kind=kind, error=type(error).__name__).inc()
            raise

    return counted


for _info in KINDS:
    kopf.on.validate(
        _info.group,
        _info.version,
        _info.plural,
        id=f"validate-{_info.plural}",
        operations=["CREATE", "UPDATE"],
        # A stopped operator must not block every write to these kinds; the
        # controller still marks a bad spec InvalidSpec when the webhook is down.
        ignore_failures=True,
    )(_counting_errors(_info.kind, _validator(_info)))
