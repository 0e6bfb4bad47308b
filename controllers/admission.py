"""The validating admission webhook: reject bad specs up front with the model's message."""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from controllers import metrics
from modelfleet.api.errors import format_validation_error
from modelfleet.api.registry import KINDS, KindInfo


def _validator(info: KindInfo) -> Any:
    def validate(spec: kopf.Spec, **_: Any) -> None:
        try:
            info.spec_model.model_validate(dict(spec))
        except ValidationError as error:
            metrics.ADMISSION_REVIEWS.labels(kind=info.kind, allowed="false").inc()
            raise kopf.AdmissionError(
                f"{info.kind} rejected: {format_validation_error(error)}", code=422
            ) from error
        metrics.ADMISSION_REVIEWS.labels(kind=info.kind, allowed="true").inc()

    return validate


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
    )(_validator(_info))
