"""``response_format`` grammars in the torch engine: the output is valid JSON of the
schema whatever the (random) model prefers, and a constrained request migrates."""

from __future__ import annotations

import json

import jsonschema
import pytest

from modelfleet.serving.grammar import GrammarVocabulary
from modelfleet.serving.interface import GrammarSpec, SamplingParams
from modelfleet.serving.model import Decoder
from modelfleet.serving.tokenizer import ByteTokenizer
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from tests.unit.serving.conftest import prompt

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer", "maximum": 9}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}
SCHEMA_SPEC = GrammarSpec("json_schema", json.dumps(SCHEMA))


def constrained_engine(model: Decoder) -> TorchEngine:
    vocabulary = GrammarVocabulary.from_bytes(model.config.vocab_size, (ByteTokenizer.EOS,))
    return TorchEngine(model, EngineConfig(num_blocks=64, block_size=8), vocabulary)


def text_of(token_ids: list[int]) -> str:
    return ByteTokenizer().decode(token_ids)


@pytest.mark.parametrize("seed", range(4))
def test_schema_output_validates_whatever_the_model_prefers(model: Decoder, seed: int) -> None:
    engine = constrained_engine(model)
    params = SamplingParams(
        max_tokens=120,
        temperature=1.0,
        seed=seed,
        grammar=SCHEMA_SPEC,
        stop_token_ids=(ByteTokenizer.EOS,),
    )
    engine.add_request("r", prompt(9, seed), params)
    events = list(engine.stream("r"))
    assert events[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of([e.token_id for e in events])), SCHEMA)


def test_unconstrained_output_of_the_same_model_is_not_json(model: Decoder) -> None:
    engine = constrained_engine(model)
    engine.add_request("r", prompt(9), SamplingParams(max_tokens=40))
    text = text_of([e.token_id for e in engine.stream("r")])
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_a_constrained_request_migrates_and_stays_valid(model: Decoder) -> None:
    params = SamplingParams(
        max_tokens=200,
        temperature=0.8,
        seed=3,
        grammar=GrammarSpec("json_object"),
        stop_token_ids=(ByteTokenizer.EOS,),
    )
    home = constrained_engine(model)
    home.add_request("r", prompt(5), params)
    expected = [e.token_id for e in home.stream("r")]
    source, target = constrained_engine(model), constrained_engine(model)
    source.add_request("r", prompt(5), params)
    head = [source.step()[0].token_id for _ in range(6)]
    target.import_request(source.export_request("r"))
    tail = [e.token_id for e in target.stream("r")]
    assert head + tail == expected
    if len(expected) < params.max_tokens:
        assert isinstance(json.loads(text_of(expected)), dict)


def test_an_engine_without_a_vocabulary_refuses_response_format(model: Decoder) -> None:
    engine = TorchEngine(model)
    with pytest.raises(ValueError, match="response_format"):
        engine.add_request("r", [1, 2], SamplingParams(grammar=GrammarSpec("json_object")))


def test_an_invalid_schema_is_refused_naming_response_format(model: Decoder) -> None:
    engine = constrained_engine(model)
    bad = GrammarSpec("json_schema", json.dumps({"type": "object", "properties": 3}))
    with pytest.raises(ValueError, match="response_format"):
        engine.add_request("r", [1, 2], SamplingParams(grammar=bad))
