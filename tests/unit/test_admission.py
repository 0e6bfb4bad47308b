"""The admission webhook's validator, called as kopf calls it: it rejects a bad spec on
CREATE and on an UPDATE that changes the spec, and lets through an UPDATE that leaves the
spec alone or comes while the object is being deleted, so a finalizer can always go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from controllers.admission import _validator
from modelfleet.api.registry import KINDS

ROOT = Path(__file__).resolve().parents[2]
FEDJOB = next(info for info in KINDS if info.kind == "FedJob")


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / name).read_text()))


BAD = load("invalid/fedjob-fedavg-mixed-ranks.yaml")
GOOD = load("fedjob.yaml")


def validate(body: dict[str, Any], old: dict[str, Any] | None) -> None:
    _validator(FEDJOB)(spec=body["spec"], namespace="default", old=old, body=body)


def test_a_bad_spec_is_rejected_on_create_and_when_an_update_brings_it() -> None:
    with pytest.raises(kopf.AdmissionError, match=r"spec\.aggregation\.method"):
        validate(BAD, None)
    with pytest.raises(kopf.AdmissionError, match=r"spec\.aggregation\.method"):
        validate(BAD, GOOD)


def test_an_update_that_leaves_a_bad_spec_alone_is_admitted() -> None:
    relabelled = {**BAD, "metadata": {**BAD["metadata"], "labels": {"team": "a"}}}
    validate(relabelled, BAD)


def test_an_update_while_deleting_is_admitted_whatever_the_spec() -> None:
    deleting = {**BAD, "metadata": {**BAD["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    validate(deleting, GOOD)
