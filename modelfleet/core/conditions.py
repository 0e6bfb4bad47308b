"""Condition bookkeeping after Kubernetes API conventions.

A condition's lastTransitionTime moves only when its status flips, so
repeating a reconcile with the same observation produces the same status and
the controller writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelfleet.api.common import Condition, ConditionStatus, ConditionType

MESSAGE_LIMIT = 32768
"""metav1.Condition's maxLength for message; a longer one would fail the status write."""
TRUNCATED = " … (truncated)"


def truncate_message(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` cut to ``limit`` characters, saying so, when longer (e.g. a long
    traceback or validation report): the head says what went wrong."""
    if len(message) <= limit:
        return message
    return message[: limit - len(TRUNCATED)] + TRUNCATED


@dataclass(frozen=True)
class Verdict:
    """What one condition should say, before timestamps are settled."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""


def settle_conditions(
    previous: list[Condition], verdicts: list[Verdict], generation: int, now: datetime
) -> list[Condition]:
    """Turn verdicts into conditions, keeping each one's transition time if unchanged."""
    before = {condition.type: condition for condition in previous}
    settled = []
    for verdict in verdicts:
        old = before.get(verdict.type)
        settled.append(
            Condition(
                type=verdict.type,
                status=verdict.status,
                reason=verdict.reason,
                message=truncate_message(verdict.message),
                last_transition_time=(
                    now if old is None or old.status != verdict.status else old.last_transition_time
                ),
                observed_generation=generation,
            )
        )
    return settled


def find_condition(conditions: list[Condition], kind: ConditionType) -> Condition | None:
    """The condition of one type, if present."""
    return next((c for c in conditions if c.type == kind), None)


def readiness_verdicts(
    ready: bool, reason: str, message: str, progressing: bool, degraded: bool
) -> list[Verdict]:
    """The standard Ready/Progressing/Degraded triple sharing one reason and message."""

    def flag(value: bool) -> ConditionStatus:
        return ConditionStatus.TRUE if value else ConditionStatus.FALSE

    return [
        Verdict(ConditionType.READY, flag(ready), reason, message),
        Verdict(ConditionType.PROGRESSING, flag(progressing), reason, message),
        Verdict(ConditionType.DEGRADED, flag(degraded), reason, message),
    ]
