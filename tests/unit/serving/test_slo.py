"""SLO attainment: closed forms and invariants. No Ray."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from modelfleet.api.modelpool import Slo
from modelfleet.serving.slo import RequestTiming, SloWindow, time_per_output_token

timings = st.lists(
    st.builds(RequestTiming, st.floats(0, 5), st.floats(0, 0.5)), min_size=1, max_size=40
)


def test_time_per_output_token_excludes_the_first_token() -> None:
    assert time_per_output_token(0.2, 1.2, 11) == 0.1
    assert time_per_output_token(0.2, 0.2, 1) == 0.0


def test_attainment_is_the_share_within_both_objectives() -> None:
    window = SloWindow()
    assert window.attainment(Slo()) is None
    slo = Slo(ttft_p95_ms=500, tpot_p95_ms=50)
    for timing in [(0.1, 0.01), (0.6, 0.01), (0.1, 0.06), (0.5, 0.05)]:
        window.record(RequestTiming(*timing))
    assert window.attainment(slo) == 0.5


def test_the_window_forgets_the_oldest_requests() -> None:
    window = SloWindow(size=2)
    for ttft in (9.0, 0.1, 0.1):
        window.record(RequestTiming(ttft, 0.0))
    assert window.attainment(Slo(ttft_p95_ms=1000)) == 1.0


@given(timings, st.floats(1, 5000), st.floats(1, 500), st.floats(1, 5000), st.floats(1, 500))
def test_attainment_is_a_ratio_monotone_in_the_objectives(
    seen: list[RequestTiming], ttft: float, tpot: float, more_ttft: float, more_tpot: float
) -> None:
    window = SloWindow()
    for timing in seen:
        window.record(timing)
    tight = window.attainment(Slo(ttft_p95_ms=ttft, tpot_p95_ms=tpot))
    loose = window.attainment(Slo(ttft_p95_ms=ttft + more_ttft, tpot_p95_ms=tpot + more_tpot))
    assert tight is not None and loose is not None
    assert 0 <= tight <= loose <= 1
