"""Stop strings cut the text before them, and a stream never shows a stop string's start."""

from __future__ import annotations

import pytest

from modelfleet.serving.stop import Release, StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    """What each piece releases until a stop, and whether one was found."""
    released = []
    for piece in pieces:
        release = matcher.feed(piece)
        released.append(release.text)
        if release.stopped:
            return released, True
    return [*released, matcher.flush()], False


def test_text_is_cut_before_the_stop_string() -> None:
    assert StopMatcher(["\n\n"]).feed("one\n\ntwo") == Release("one", stopped=True)


def test_a_stop_string_spanning_pieces_is_found_and_never_shown() -> None:
    released, stopped = feed_all(StopMatcher(["END"]), ["the E", "N", "D of it"])
    assert stopped and released == ["the ", "", ""]


def test_held_text_is_released_once_it_cannot_start_a_stop() -> None:
    released, stopped = feed_all(StopMatcher(["END"]), ["the E", "Nx", " tail"])
    assert not stopped and released == ["the ", "ENx", " tail", ""]
    assert "".join(released) == "the ENx tail"


def test_the_tail_held_at_the_end_is_flushed() -> None:
    released, stopped = feed_all(StopMatcher(["stop"]), ["a s", "to"])
    assert not stopped and released == ["a ", "", "sto"]


def test_the_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == Release("hel", stopped=True)


def test_only_text_that_could_start_a_stop_is_held() -> None:
    matcher = StopMatcher(["abc", "xy"])
    assert matcher.feed("zzab") == Release("zz", stopped=False)
    assert matcher.feed("x") == Release("ab", stopped=False)
    assert matcher.feed("y") == Release("", stopped=True)


def test_no_stops_release_everything() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("any text") == Release("any text", stopped=False)
    assert matcher.flush() == ""


def test_empty_stop_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopMatcher(["ok", ""])
