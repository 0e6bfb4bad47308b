"""The OpenAI request fields, honoured or refused, through a real pool and the official client.

The pool serves the builtin mini model (byte tokenizer) and a small random Qwen2
checkpoint with a trained byte-level BPE tokenizer and a LoRA adapter, so prompts,
EOS ids and detokenization come from a real Hugging Face tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from ray import serve
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from modelfleet.serving.app import app_status, deploy
from modelfleet.serving.tokenizer import ByteTokenizer
from tests.unit.serving.checkpoints import save_adapter
from tests.unit.serving.tokenizers_for_tests import MULTILINGUAL, byte_level_bpe

from .conftest import MAX_MODEL_LEN, MINI_URI, MODEL, client, expected_tokens

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAME = "openai-params"
QWEN = "qwen"
ADAPTER = "qwen-lora"
QWEN_MAX_LEN = 128
PROMPT = "The quick brown fox"
USER = [{"role": "user", "content": "hi"}]


def random_qwen(tokenizer: PreTrainedTokenizerFast) -> Any:
    """A random Qwen2 over ``tokenizer``'s vocabulary that ends at ``<|im_end|>`` or id 0."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        tie_word_embeddings=True,
        eos_token_id=end,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = [end, 0]
    return model


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_level_bpe()


@pytest.fixture(scope="module")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast
) -> Path:
    """The Qwen2 checkpoint with its tokenizer in ``base/``, its adapter in ``lora/``."""
    directory = tmp_path_factory.mktemp("qwen")
    random_qwen(tokenizer).save_pretrained(directory / "base")
    tokenizer.save_pretrained(directory / "base")
    save_adapter(random_qwen(tokenizer), directory / "lora", 1, ["q_proj", "v_proj"])
    return directory


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    """The checkpoint as transformers runs it."""
    return AutoModelForCausalLM.from_pretrained(checkpoint / "base").eval()


@pytest.fixture(scope="module")
def pool(serve_url: str, checkpoint: Path) -> Iterator[str]:
    """One replica per model: mini, and the Qwen2 checkpoint with its adapter."""
    spec = {
        "models": [
            {"name": MODEL, "uri": MINI_URI, "maxModelLen": MAX_MODEL_LEN},
            {
                "name": QWEN,
                "uri": f"file://{checkpoint / 'base'}",
                "maxModelLen": QWEN_MAX_LEN,
                "adapters": [{"name": ADAPTER, "uri": f"file://{checkpoint / 'lora'}"}],
            },
        ],
        "replicas": 1,
        "migration": {"enabled": False},
        "auth": {"mode": "None"},
        "servingOptions": {"replicaNumCpus": 0.5, "controlIntervalS": 0.05},
    }
    deploy(spec, name=NAME, route_prefix=f"/{NAME}")
    yield f"{serve_url}/{NAME}"
    serve.delete(NAME)


def running_requests() -> int:
    models: dict[str, Any] = app_status(NAME)["models"]
    return sum(int(model["requests"]) for model in models.values())


def mini_text(tokens: list[int]) -> str:
    return ByteTokenizer().decode(tokens)


def test_models_list_adapters_with_their_parent(pool: str) -> None:
    models = {m.id: (m.model_extra or {}).get("parent") for m in client(pool).models.list()}
    assert models == {MODEL: None, QWEN: None, ADAPTER: QWEN}


def test_a_stop_string_cuts_the_text_and_frees_the_request(pool: str) -> None:
    text = mini_text(expected_tokens(PROMPT, 40))
    stop = text[6:8]
    cut = text[: text.find(stop)]
    api = client(pool)
    result = api.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop]
    )
    assert result.choices[0].text == cut and result.choices[0].finish_reason == "stop"
    assert running_requests() == 0
    chunks = list(
        api.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_are_seeded_seed_plus_index(pool: str) -> None:
    api = client(pool)
    result = api.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=6,
        temperature=0.9,
        seed=11,
        n=3,
        extra_body={"return_token_ids": True},
    )
    for index, choice in enumerate(result.choices):
        assert choice.index == index
        expected = expected_tokens(PROMPT, 6, temperature=0.9, seed=11 + index)
        assert (choice.model_extra or {})["token_ids"] == expected
    assert result.usage is not None and result.usage.completion_tokens == 18
    chunks = list(
        api.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=4, n=2, stream=True, seed=3
        )
    )
    finished = [chunk.choices[0].index for chunk in chunks if chunk.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]


def test_completion_logprobs_with_echo(pool: str) -> None:
    result = client(pool).completions.create(
        model=MODEL, prompt="hi", max_tokens=3, temperature=0, logprobs=2, echo=True
    )
    choice = result.choices[0]
    assert choice.text.startswith("hi")
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert logprobs.tokens[:3] == ["<s>", "h", "i"] and len(logprobs.tokens) >= 4
    assert logprobs.token_logprobs is not None and logprobs.token_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.top_logprobs is not None and logprobs.top_logprobs[0] is None
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs[3:])
    assert logprobs.text_offset is not None and logprobs.text_offset[3] == 2


def test_chat_top_logprobs(pool: str) -> None:
    result = client(pool).chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.token == token.top_logprobs[0].token
        assert token.bytes and token.logprob == pytest.approx(token.top_logprobs[0].logprob)


def test_penalties_decode_as_the_engine_does(pool: str) -> None:
    result = client(pool).completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        presence_penalty=1.5,
        frequency_penalty=0.5,
        extra_body={"return_token_ids": True},
    )
    expected = expected_tokens(PROMPT, 24, presence_penalty=1.5, frequency_penalty=0.5)
    assert (result.choices[0].model_extra or {})["token_ids"] == expected
    assert expected != expected_tokens(PROMPT, 24)


def test_a_json_schema_response_is_valid(pool: str) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    result = client(pool).chat.completions.create(
        model=MODEL,
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    )
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert set(json.loads(choice.message.content or "")) == {"ok"}


def test_text_parts_are_read_as_text(pool: str) -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    result = client(pool).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
        max_tokens=1,
    )
    expected = ByteTokenizer().encode_chat([{"role": "user", "content": "one\ntwo"}])
    assert result.usage is not None and result.usage.prompt_tokens == len(expected)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logit_bias": {"65": 10}}, "logit_bias"),
        ({"user": "alice"}, "user"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": [1]},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"extra_body": {"guided_json": {}}}, "guided_json"),
    ],
)
def test_what_the_pool_does_not_implement_is_a_400_naming_it(
    pool: str, fields: dict[str, Any], param: str
) -> None:
    arguments: dict[str, Any] = {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as error:
        client(pool).chat.completions.create(**arguments)
    body = error.value.body
    assert isinstance(body, dict) and body["param"] == param and param in body["message"]


def hf_greedy(model: Any, prompt: list[int], count: int) -> list[int]:
    """transformers' greedy tokens, up to and including the first EOS."""
    output = model.generate(
        torch.tensor([prompt]), max_new_tokens=count, do_sample=False, pad_token_id=0
    )
    return [int(t) for t in output[0, len(prompt) :]]


def test_completions_use_the_models_tokenizer_and_eos(
    pool: str, reference: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    result = client(pool).completions.create(
        model=QWEN,
        prompt=MULTILINGUAL,
        max_tokens=20,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    prompt = tokenizer.encode(MULTILINGUAL)
    tokens = (result.choices[0].model_extra or {})["token_ids"]
    assert tokens == hf_greedy(reference, prompt, 20)
    assert result.choices[0].text == tokenizer.decode(tokens, skip_special_tokens=True)
    assert result.usage is not None and result.usage.prompt_tokens == len(prompt)


def test_chat_uses_the_template_and_defaults_to_the_context_left(
    pool: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    result = client(pool).chat.completions.create(model=QWEN, messages=USER, temperature=0)
    prompt = tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    total = result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.choices[0].finish_reason == "stop" or total == QWEN_MAX_LEN


def test_streamed_text_is_the_decoded_text(pool: str, tokenizer: PreTrainedTokenizerFast) -> None:
    api = client(pool)
    arguments: dict[str, Any] = {
        "model": QWEN,
        "prompt": MULTILINGUAL,
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 4,
        "extra_body": {"return_token_ids": True},
    }
    whole = api.completions.create(**arguments).choices[0]
    chunks = list(api.completions.create(stream=True, **arguments))
    streamed = "".join(chunk.choices[0].text for chunk in chunks)
    tokens = (whole.model_extra or {})["token_ids"]
    assert streamed == whole.text == tokenizer.decode(tokens, skip_special_tokens=True)


def test_an_adapter_decodes_on_its_base_pool(pool: str) -> None:
    api = client(pool)
    outputs = {}
    for model in (QWEN, ADAPTER):
        result = api.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            extra_body={"return_token_ids": True},
        )
        assert result.model == model
        outputs[model] = (result.choices[0].model_extra or {})["token_ids"]
    assert outputs[QWEN] != outputs[ADAPTER]
    assert set(app_status(NAME)["models"]) == {MODEL, QWEN}
