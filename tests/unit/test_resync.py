"""The pure parts of resyncing without kopf timers: who leads, which finalizers go,
retry delays, per-object locks, truncated messages, events and log subjects."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from controllers.context import FINALIZER, needs_cleanup
from controllers.events import render_event
from controllers.log_context import SubjectFilter, about
from controllers.reconcile import (
    REGISTERED,
    RETRY_MAX_SECONDS,
    ObjectLocks,
    Registration,
    retry_delay,
)
from controllers.resync import (
    LEGACY_FINALIZER,
    deletion_time,
    leads,
    owner_registration,
    stale_finalizers,
)
from modelfleet.api.registry import kind_by_name
from modelfleet.core.conditions import MESSAGE_LIMIT, TRUNCATED, truncate_message

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago_s: float, lifetime: int = 60) -> dict[str, object]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago_s)).isoformat(),
    }


def test_the_highest_live_priority_leads_and_ties_pause_everyone() -> None:
    me = _peer(5, 1)
    assert leads({"me": me}, "me", 5, NOW)
    assert leads({"me": me, "low": _peer(1, 1)}, "me", 5, NOW)
    assert not leads({"me": me, "high": _peer(9, 1)}, "me", 5, NOW)
    assert not leads({"me": me, "twin": _peer(5, 1)}, "me", 5, NOW)
    assert leads({"me": me, "dead": _peer(9, 61)}, "me", 5, NOW)


def test_a_replica_kopf_has_not_announced_does_not_lead() -> None:
    assert not leads({"other": _peer(1, 1)}, "me", 5, NOW)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.tuples(st.integers(0, 3), st.floats(0, 120)),
        min_size=1,
    )
)
def test_at_most_one_replica_leads(peers: dict[str, tuple[int, float]]) -> None:
    """Whatever the peering says, two replicas never both think they lead."""
    status = {name: _peer(priority, ago) for name, (priority, ago) in peers.items()}
    alive = [name for name, (_, ago) in peers.items() if ago < 60]
    leaders = [name for name in alive if leads(status, name, peers[name][0], NOW)]
    assert len(leaders) <= 1
    if alive:
        top = max(peers[name][0] for name in alive)
        expected = [name for name in alive if peers[name][0] == top]
        assert leaders == (expected if len(expected) == 1 else [])


def test_stale_finalizers_are_dropped_and_others_kept() -> None:
    others = ["example.com/keep"]
    assert stale_finalizers([LEGACY_FINALIZER, *others], cleanup=True) == others
    assert stale_finalizers([FINALIZER, *others], cleanup=True) == [FINALIZER, *others]
    assert stale_finalizers([FINALIZER, LEGACY_FINALIZER, *others], cleanup=False) == others


def test_only_the_local_backend_needs_a_finalizer() -> None:
    assert needs_cleanup("local") and not needs_cleanup("kuberay")


def test_deletion_time_reads_the_timestamp() -> None:
    assert deletion_time({"metadata": {}}) is None
    stamp = deletion_time({"metadata": {"deletionTimestamp": "2026-12-01T12:00:00Z"}})
    assert stamp == NOW.timestamp()


@given(st.integers(0, 10_000))
def test_retry_delay_doubles_up_to_its_cap(retry: int) -> None:
    delay = retry_delay(retry)
    assert 0 < delay <= RETRY_MAX_SECONDS
    assert retry_delay(retry + 1) == min(2 * delay, RETRY_MAX_SECONDS)


def test_a_held_object_is_skipped_by_a_caller_that_does_not_wait() -> None:
    locks = ObjectLocks()
    key = ("ModelPool", "ns", "a")
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locks.hold(key) as held:
            assert held
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    with locks.hold(key, 0) as held:
        assert not held
    with locks.hold(("ModelPool", "ns", "b"), 0) as other:
        assert other
    release.set()
    holder.join()
    with locks.hold(key, 0) as held:
        assert held


def test_long_messages_are_cut_to_the_condition_limit_and_say_so() -> None:
    assert truncate_message("short") == "short"
    long = "x" * (MESSAGE_LIMIT + 10)
    cut = truncate_message(long)
    assert len(cut) == MESSAGE_LIMIT and cut.endswith(TRUNCATED)
    exact = "y" * MESSAGE_LIMIT
    assert truncate_message(exact) == exact


def test_the_owner_of_a_child_is_its_controlling_registered_kind() -> None:
    info = kind_by_name("ModelPool")
    REGISTERED.setdefault(info.kind, Registration(info, lambda *_: None))  # type: ignore[arg-type,return-value]
    api_version = f"{info.group}/{info.version}"

    def child(*references: dict[str, object]) -> dict[str, object]:
        return {"metadata": {"ownerReferences": list(references)}}

    ours = {"apiVersion": api_version, "kind": "ModelPool", "name": "p", "controller": True}
    assert owner_registration(child(ours)) == (REGISTERED["ModelPool"], "p")
    assert owner_registration(child({**ours, "controller": False})) is None
    assert owner_registration(child({**ours, "apiVersion": "other.io/v1"})) is None
    assert owner_registration(child({**ours, "kind": "Deployment"})) is None
    assert owner_registration({"metadata": {}}) is None


def test_an_event_names_its_object_and_is_bounded() -> None:
    body = {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "chat", "namespace": "team", "uid": "u1", "resourceVersion": "7"},
    }
    event = render_event(body, "Warning", "AuthDisabled", "m" * 5000, NOW)
    assert event["involvedObject"] == {
        "apiVersion": "modelfleet.io/v1alpha1",
        "kind": "ModelPool",
        "name": "chat",
        "namespace": "team",
        "uid": "u1",
        "resourceVersion": "7",
    }
    assert event["metadata"] == {"generateName": "chat.", "namespace": "team"}
    assert len(event["message"]) == 1024
    assert event["firstTimestamp"] == "2026-12-01T12:00:00Z"


def test_log_lines_name_the_object_being_reconciled() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("modelfleet.test.subject")
    handler = Keep()
    handler.addFilter(SubjectFilter())
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        with about("ModelPool team/chat"):
            logger.warning("inside")
        subjects = [getattr(record, "subject", None) for record in records]
        assert subjects == ["-", "ModelPool team/chat"]
    finally:
        logger.removeHandler(handler)


def test_subjects_do_not_leak_between_threads() -> None:
    seen: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def work(name: str) -> None:
        with about(name):
            barrier.wait(5)
            record = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
            SubjectFilter().filter(record)
            seen[name] = record.subject  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a/1", "b/2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a/1": "a/1", "b/2": "b/2"}
