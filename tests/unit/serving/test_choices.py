"""A choice's text, stop, echo and offsets, built token event by token event."""

from __future__ import annotations

from collections.abc import Sequence

from modelfleet.serving.choices import ChoiceDecoder, Delta
from modelfleet.serving.interface import FinishReason, TokenEvent, TokenLogprob
from modelfleet.serving.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()


def events(text: str, finish: FinishReason = "length") -> list[TokenEvent]:
    """One event per byte of ``text``; the last one finishes with ``finish``."""
    tokens = list(text.encode())
    last = len(tokens) - 1
    return [
        TokenEvent("r", token, index, finish if index == last else None, logprob=-0.5)
        for index, token in enumerate(tokens)
    ]


def run(decoder: ChoiceDecoder, stream: Sequence[TokenEvent]) -> list[Delta]:
    """Deltas until the choice finishes, as the frontend reads them."""
    deltas = []
    for event in stream:
        deltas.append(decoder.feed(event))
        if deltas[-1].finish_reason is not None:
            break
    return deltas


def test_a_stop_string_spanning_tokens_ends_the_choice_before_it() -> None:
    deltas = run(ChoiceDecoder(BYTES, BYTES.encode("q"), stops=["##"]), events("ab#c#d##ef"))
    assert "".join(d.text for d in deltas) == "ab#c#d"
    assert deltas[-1].finish_reason == "stop" and len(deltas) == 8
    assert [d.text for d in deltas] == ["a", "b", "", "#c", "", "#d", "", ""]


def test_without_a_stop_the_engines_finish_reason_and_all_text_remain() -> None:
    deltas = run(ChoiceDecoder(BYTES, [], stops=["zz"]), events("héllo z", finish="stop"))
    assert "".join(d.text for d in deltas) == "héllo z"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].text == "z"


def test_multibyte_characters_are_released_whole_with_offsets_into_the_text() -> None:
    deltas = run(ChoiceDecoder(BYTES, []), events("añb"))
    assert [d.text for d in deltas] == ["a", "", "ñ", "b"]
    assert [d.offsets for d in deltas] == [(0,), (1,), (1,), (2,)]


def test_echo_prepends_the_prompt_once() -> None:
    prompt = "hi"
    decoder = ChoiceDecoder(BYTES, BYTES.encode(prompt, add_bos=False), echo=prompt)
    first = TokenEvent("r", ord("!"), 0, logprob=-0.5)
    deltas = [decoder.feed(first), decoder.feed(TokenEvent("r", ord("?"), 1, "length", -0.7))]
    assert [d.text for d in deltas] == ["hi!", "?"]
    assert [d.offsets for d in deltas] == [(2,), (3,)]
    assert [len(d.scored) for d in deltas] == [1, 1]


def test_echo_with_prompt_logprobs_scores_every_prompt_token() -> None:
    prompt = "hé"
    prompt_ids = BYTES.encode(prompt, add_bos=False)
    scores = (None, *(TokenLogprob(t, -1.0) for t in prompt_ids[1:]))
    decoder = ChoiceDecoder(BYTES, prompt_ids, echo=prompt)
    delta = decoder.feed(TokenEvent("r", ord("!"), 0, "length", -0.5, prompt_logprobs=scores))
    assert delta.text == "hé!"
    assert [(s.token_id, s.logprob) for s in delta.scored] == [
        (ord("h"), None),
        (0xC3, -1.0),
        (0xA9, -1.0),
        (ord("!"), -0.5),
    ]
    assert delta.offsets == (0, 1, 1, 2)
