"""Every OpenAI request field is honoured or refused with a 400 naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelfleet.core.openai_api import ApiError, check_length
from modelfleet.serving.interface import GrammarSpec, SamplingParams
from modelfleet.serving.openai_requests import (
    CHAT_UNSUPPORTED,
    COMPLETION_UNSUPPORTED,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    choice_params,
    parse_request,
)

USER = [{"role": "user", "content": "hi"}]


def completion(**fields: Any) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", "prompt": "x", **fields}))


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": USER, **fields}
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


def refused(request_type: type[GenerationRequest], **fields: Any) -> ApiError:
    base: dict[str, Any] = {"model": "m"}
    base.update({"prompt": "x"} if request_type is CompletionRequest else {"messages": USER})
    with pytest.raises(ApiError) as error:
        parse_request(request_type, json.dumps({**base, **fields}).encode())
    assert error.value.status == 400
    assert error.value.body()["error"]["type"] == "invalid_request_error"
    return error.value


def sampling(request: GenerationRequest) -> SamplingParams:
    return request.sampling(8, (7,), None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("logit_bias", {"50256": -100}),
        ("parallel_tool_calls", False),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "low"),
        ("service_tier", "flex"),
        ("store", True),
        ("metadata", {"k": "v"}),
        ("web_search_options", {}),
        ("user", "alice"),
        ("verbosity", "low"),
    ],
)
def test_chat_fields_the_pool_does_not_implement_are_refused(field: str, value: Any) -> None:
    error = refused(ChatCompletionRequest, **{field: value})
    assert error.param == field and field in error.message and "not supported" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("suffix", "end"), ("best_of", 3), ("logit_bias", {"1": 5}), ("user", "bob")],
)
def test_completion_fields_the_pool_does_not_implement_are_refused(field: str, value: Any) -> None:
    error = refused(CompletionRequest, **{field: value})
    assert error.param == field and field in error.message


@pytest.mark.parametrize(
    ("table", "request_type"),
    [(CHAT_UNSUPPORTED, ChatCompletionRequest), (COMPLETION_UNSUPPORTED, CompletionRequest)],
)
def test_unimplemented_fields_that_ask_for_nothing_are_accepted(
    table: dict[str, tuple[Any, ...]], request_type: type[GenerationRequest]
) -> None:
    base = {"model": "m", "prompt": "x", "messages": USER}
    if request_type is CompletionRequest:
        del base["messages"]
    else:
        del base["prompt"]
    for field, neutral in table.items():
        for value in neutral:
            parse_request(request_type, json.dumps({**base, field: value}).encode())


@pytest.mark.parametrize("request_type", [CompletionRequest, ChatCompletionRequest])
def test_unknown_fields_are_refused(request_type: type[GenerationRequest]) -> None:
    error = refused(request_type, frobnicate=1)
    assert error.param == "frobnicate" and "unknown parameter" in error.message


def test_fields_of_the_other_endpoint_are_refused() -> None:
    assert refused(ChatCompletionRequest, echo=True).param == "echo"
    assert refused(CompletionRequest, response_format={"type": "text"}).param == "response_format"
    assert refused(CompletionRequest, top_logprobs=2).param == "top_logprobs"


def test_stream_options_need_a_stream_and_known_keys() -> None:
    options = {"include_obfuscation": False}
    error = refused(CompletionRequest, stream=True, stream_options=options)
    assert error.param == "stream_options.include_obfuscation"
    error = refused(ChatCompletionRequest, stream_options={"include_usage": True})
    assert error.param == "stream_options" and "stream" in error.message
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage


def test_the_three_extensions_are_accepted() -> None:
    request = completion(priority=5, return_token_ids=True)
    assert request.priority == 5 and request.return_token_ids
    assert sampling(request).stop_token_ids != ()
    assert sampling(completion(ignore_eos=True)).stop_token_ids == ()


def test_nulls_mean_openais_defaults() -> None:
    nulls = dict.fromkeys(
        ["temperature", "top_p", "n", "stop", "seed", "presence_penalty", "stream", "logprobs"]
    )
    request = completion(**nulls, frequency_penalty=None, echo=None, max_tokens=None)
    params = sampling(request)
    assert (params.temperature, params.top_p, params.logprobs) == (1.0, 1.0, None)
    assert request.choices == 1 and request.stops == () and not request.streaming


def test_penalties_reach_the_engine() -> None:
    params = sampling(chat(presence_penalty=1.5, frequency_penalty=-0.5))
    assert (params.presence_penalty, params.frequency_penalty) == (1.5, -0.5)
    assert refused(ChatCompletionRequest, presence_penalty=2.5).param == "presence_penalty"
    assert refused(CompletionRequest, frequency_penalty=-3).param == "frequency_penalty"


def test_generation_stops_at_the_given_eos_and_decodes_with_the_adapter() -> None:
    params = chat().sampling(8, (3, 9), "support-lora")
    assert params.stop_token_ids == (3, 9) and params.adapter == "support-lora"


def test_stop_takes_a_string_or_up_to_four_strings() -> None:
    assert completion(stop="\n").stops == ("\n",)
    assert chat(stop=["a", "b", "c", "d"]).stops == ("a", "b", "c", "d")
    assert refused(CompletionRequest, stop=["a", "b", "c", "d", "e"]).param == "stop"
    assert refused(ChatCompletionRequest, stop="").param == "stop[0]"


def test_completion_logprobs_and_echo() -> None:
    params = sampling(completion(logprobs=3, echo=True))
    assert params.logprobs == 3 and params.prompt_logprobs
    assert not sampling(completion(echo=True)).prompt_logprobs
    assert not sampling(completion(logprobs=2)).prompt_logprobs
    assert refused(CompletionRequest, logprobs=21).param == "logprobs"
    assert refused(CompletionRequest, logprobs=True).param == "logprobs"


def test_chat_logprobs_and_top_logprobs() -> None:
    assert sampling(chat(logprobs=True)).logprobs == 0
    assert sampling(chat(logprobs=True, top_logprobs=20)).logprobs == 20
    assert sampling(chat(logprobs=False)).logprobs is None
    error = refused(ChatCompletionRequest, top_logprobs=2)
    assert error.param == "top_logprobs" and "logprobs" in error.message
    assert refused(ChatCompletionRequest, logprobs=True, top_logprobs=21).param == "top_logprobs"


def test_response_formats_become_grammars() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    json_schema = {"name": "thing", "schema": schema, "strict": True}
    assert sampling(chat(response_format={"type": "text"})).grammar is None
    json_object = sampling(chat(response_format={"type": "json_object"}))
    assert json_object.grammar == GrammarSpec("json_object")
    params = sampling(chat(response_format={"type": "json_schema", "json_schema": json_schema}))
    assert params.grammar == GrammarSpec("json_schema", json.dumps(schema))


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}, ""),
        ({"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}, "name"),
        ({"type": "json_schema"}, ""),
        ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, ""),
        ({"type": "xml"}, "type"),
    ],
)
def test_bad_response_formats_are_refused(response_format: dict[str, Any], param: str) -> None:
    error = refused(ChatCompletionRequest, response_format=response_format)
    assert error.param is not None and error.param.startswith("response_format")
    assert error.param.endswith(param)


def test_n_is_honoured_with_seeds_per_choice() -> None:
    request = completion(n=3, seed=10)
    params = sampling(request)
    assert request.choices == 3
    assert [choice_params(params, i).seed for i in range(3)] == [10, 11, 12]
    assert choice_params(sampling(completion(n=2)), 1).seed is None
    assert choice_params(sampling(completion(seed=2**63 - 1)), 1).seed == 0
    assert refused(CompletionRequest, n=0).param == "n"
    assert refused(ChatCompletionRequest, n=129).param == "n"


def test_chat_content_may_be_text_parts() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    request = chat(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]
    )
    assert request.conversation() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one\ntwo"},
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
            "messages[0].content[1].type",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "messages[0].content[0].type",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "a", "cache": 1}]},
            "messages[0].content[0].cache",
        ),
        ({"role": "tool", "content": "x", "tool_call_id": "1"}, "messages[0].role"),
        ({"role": "developer", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": "x", "name": "alice"}, "messages[0].name"),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            "messages[0].tool_calls",
        ),
        ({"role": "assistant", "content": None}, "messages[0].content"),
        ({"role": "user"}, "messages[0].content"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(message: dict[str, Any], param: str) -> None:
    error = refused(ChatCompletionRequest, messages=[message])
    assert error.param == param and param in error.message


def test_assistant_messages_echoed_back_with_nulls_are_accepted() -> None:
    reply = {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": None}
    request = chat(messages=[*USER, reply, {"role": "user", "content": "more"}])
    assert [turn["role"] for turn in request.conversation()] == ["user", "assistant", "user"]


def test_output_limits_default_per_endpoint() -> None:
    assert completion().output_limit(500) == 16
    assert chat().output_limit(500) == 500
    assert chat(max_tokens=7).output_limit(500) == 7
    assert chat(max_tokens=7, max_completion_tokens=9).output_limit(500) == 9
    assert chat(max_completion_tokens=9).limit_param == "max_completion_tokens"


def test_length_errors_name_the_parameter_that_set_the_limit() -> None:
    with pytest.raises(ApiError) as error:
        check_length(10, 20, 16, "messages", "max_completion_tokens")
    assert error.value.param == "max_completion_tokens"
    with pytest.raises(ApiError) as error:
        check_length(16, 1, 16, "messages", "max_tokens")
    assert error.value.param == "messages" and error.value.code == "context_length_exceeded"


def test_bodies_that_are_not_json_objects_are_refused() -> None:
    for body in (b"{", b"[1]"):
        with pytest.raises(ApiError) as error:
            parse_request(CompletionRequest, body)
        assert error.value.status == 400
