"""A request migrated mid-stream continues token for token, staged over real Ray actors."""

from __future__ import annotations

import pytest
from ray import serve

from .conftest import ZOO, expected_tokens, open_stream, pool_spec, read_tokens, status_of

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TOKENS = 800
SPEC = pool_spec(2, model=ZOO)
"""Long enough that the request is still decoding when the test acts on it."""

PROMPT = "Live migration moves a running request and its KV cache. " * 2


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_forced_migration_mid_stream_changes_no_token(pool: str, temperature: float) -> None:
    name = pool.rsplit("/", 1)[-1]
    expected = expected_tokens(PROMPT, TOKENS, temperature, model=ZOO)
    before = status_of(name, ZOO)["migrations"]
    chunks = iter(open_stream(pool, PROMPT, TOKENS, temperature, model=ZOO))
    first = next(chunks)
    head = first.choices[0].model_extra["token_ids"] + read_tokens(chunks, 40)
    report = serve.get_app_handle(name).migrate.remote(first.id).result()
    tail = read_tokens(chunks)
    assert report is not None and report.source != report.target
    assert not report.recomputed
    assert report.final_blocks < report.staged_blocks, "most KV must move while decoding"
    parts = (report.export_s, report.transfer_s, report.import_s)
    assert min(*parts, report.step_wait_s) >= 0.0, "spans from two replicas out of order"
    assert report.downtime_s == pytest.approx(sum(parts), abs=1e-6)
    assert head + tail == expected
    assert status_of(name, ZOO)["migrations"] == before + 1
