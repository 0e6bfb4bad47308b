"""Text goes in and text comes out without any downloaded vocabulary."""

from __future__ import annotations

import pytest

from modelfleet.serving.interface import SamplingParams
from modelfleet.serving.tokenizer import ByteTokenizer

from .conftest import EngineFactory


def test_text_round_trips_through_bytes() -> None:
    tokenizer = ByteTokenizer()
    text = "héllo, wörld → 🚀"
    ids = tokenizer.encode(text)
    assert ids[0] == ByteTokenizer.BOS and all(0 <= i < 256 for i in ids[1:])
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([*ids, ByteTokenizer.EOS, ByteTokenizer.PAD]) == text


def test_decoding_rejects_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="token_ids"):
        ByteTokenizer().decode([65, 400])


def test_text_prompt_generates_reproducible_text(make_engine: EngineFactory) -> None:
    tokenizer = ByteTokenizer()
    params = SamplingParams(max_tokens=12, stop_token_ids=(ByteTokenizer.EOS,))
    texts = []
    for _ in range(2):
        engine = make_engine()
        engine.add_request("t", tokenizer.encode("The fleet serves"), params)
        texts.append(tokenizer.decode([event.token_id for event in engine.stream("t")]))
    assert isinstance(texts[0], str) and texts[0] == texts[1]
