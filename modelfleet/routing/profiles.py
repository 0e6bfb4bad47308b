"""What the router learns from outcomes: success rates per target and query cluster.

A declared capability profile is a prior worth ``PRIOR_TRIALS`` outcomes, so feedback
moves it but one unlucky answer does not; a target with no profile starts at an
uninformed 0.5 worth one outcome. The counts are exported to the policy's status, so a
restarted router resumes from what its predecessor learned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PRIOR_TRIALS = 10.0
UNINFORMED = 0.5
NO_CLUSTER = ""
"""The cluster of every query when the policy declares none."""

Key = tuple[str, str]
"""(target, cluster)."""


@dataclass
class Outcomes:
    """Feedback received for one target on one cluster."""

    trials: int = 0
    successes: int = 0


class ProfileBook:
    """Prior scores plus learned outcomes; estimates success per (target, cluster)."""

    def __init__(self, priors: dict[Key, float], learned: Iterable[tuple[Key, Outcomes]]) -> None:
        self._priors = dict(priors)
        self._learned: dict[Key, Outcomes] = {key: outcomes for key, outcomes in learned}

    def set_priors(self, priors: dict[Key, float]) -> None:
        """New declared profiles (the policy changed); learned outcomes are kept."""
        self._priors = dict(priors)

    def success(self, target: str, cluster: str) -> float:
        """The posterior mean success rate: prior pseudo-outcomes plus observed ones."""
        key = (target, cluster)
        prior = self._priors.get(key)
        weight, mean = (1.0, UNINFORMED) if prior is None else (PRIOR_TRIALS, prior)
        seen = self._learned.get(key, Outcomes())
        return (mean * weight + seen.successes) / (weight + seen.trials)

    def informed(self, cluster: str) -> bool:
        """Whether anything (a prior or an outcome) is known of this cluster."""
        return any(key[1] == cluster for key in (*self._priors, *self._learned))

    def record(self, target: str, cluster: str, correct: bool) -> None:
        outcomes = self._learned.setdefault((target, cluster), Outcomes())
        outcomes.trials += 1
        outcomes.successes += int(correct)

    def export(self) -> list[dict[str, object]]:
        """The learned outcomes in the status' wire form (``LearnedProfile``)."""
        return [
            {"target": t, "cluster": c, "trials": o.trials, "successes": o.successes}
            for (t, c), o in sorted(self._learned.items())
        ]


def import_learned(rows: Iterable[dict[str, object]]) -> list[tuple[Key, Outcomes]]:
    """Outcomes from the status' wire form; malformed rows are skipped, not fatal."""
    learned = []
    for row in rows:
        target, cluster = row.get("target"), row.get("cluster", NO_CLUSTER)
        trials, successes = row.get("trials", 0), row.get("successes", 0)
        if (
            isinstance(target, str)
            and isinstance(cluster, str)
            and isinstance(trials, int)
            and isinstance(successes, int)
            and 0 <= successes <= trials
        ):
            learned.append(((target, cluster), Outcomes(trials, successes)))
    return learned
