"""Each served model gets its own tokenizer: vocabulary, BOS, chat template and EOS ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.api.modelpool import ServedModel
from modelfleet.artifacts.errors import ArtifactError
from modelfleet.serving.model_tokenizer import HfTokenizer, load_tokenizer
from modelfleet.serving.tokenizer import ByteTokenizer, ChatTemplateError

from .tokenizers_for_tests import byte_level_bpe, save_model_dir, sentencepiece_bpe


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE model directory whose generation config adds EOS id 0."""
    return save_model_dir(byte_level_bpe(), tmp_path_factory.mktemp("bpe"), generation_eos=0)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style model directory without a chat template or generation config."""
    return save_model_dir(sentencepiece_bpe(), tmp_path_factory.mktemp("sp"))


def test_eos_ids_merge_the_generation_config_and_the_tokenizer(chatml_dir: Path) -> None:
    tokenizer = HfTokenizer.from_dir(chatml_dir)
    assert tokenizer.eos_token_ids == (0, byte_level_bpe().convert_tokens_to_ids("<|im_end|>"))


@pytest.mark.parametrize("eos", [[2, 1, 2], 2])
def test_generation_config_eos_may_be_a_list_or_an_int(tmp_path: Path, eos: object) -> None:
    tokenizer = HfTokenizer.from_dir(save_model_dir(sentencepiece_bpe(), tmp_path, eos))
    assert tokenizer.eos_token_ids == ((2, 1) if isinstance(eos, list) else (2,))


def test_a_conversation_uses_the_models_chat_template(chatml_dir: Path) -> None:
    tokenizer = HfTokenizer.from_dir(chatml_dir)
    ids = tokenizer.encode_chat([{"role": "user", "content": "hi there"}])
    rendered = byte_level_bpe().decode(ids)
    assert rendered == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"


def test_a_model_without_chat_template_refuses_conversations(llama_dir: Path) -> None:
    with pytest.raises(ChatTemplateError, match="no chat template"):
        HfTokenizer.from_dir(llama_dir).encode_chat([{"role": "user", "content": "hi"}])


def test_a_template_that_refuses_the_conversation_is_a_chat_template_error(
    tmp_path: Path,
) -> None:
    strict = byte_level_bpe()
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    tokenizer = HfTokenizer.from_dir(save_model_dir(strict, tmp_path))
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tokenizer.encode_chat([{"role": "user", "content": "hi"}])


def test_completion_prompts_get_bos_when_the_tokenizer_adds_it(
    llama_dir: Path, chatml_dir: Path
) -> None:
    assert HfTokenizer.from_dir(llama_dir).encode_prompt("the")[0] == 1
    assert HfTokenizer.from_dir(chatml_dir).encode_prompt("the") == byte_level_bpe().encode("the")


def test_byte_level_tokens_map_back_to_their_bytes(chatml_dir: Path) -> None:
    tokenizer = HfTokenizer.from_dir(chatml_dir)
    ids = tokenizer.encode_prompt(" wé🙂")
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == " wé🙂".encode()
    assert tokenizer.token_bytes(tokenizer.eos_token_ids[-1]) == b"<|im_end|>"


def test_sentencepiece_tokens_map_word_starts_and_byte_fallbacks(llama_dir: Path) -> None:
    tokenizer = HfTokenizer.from_dir(llama_dir)
    ids = tokenizer.encode_prompt("the é")
    assert [tokenizer.token_bytes(i) for i in ids] == [b"<s>", b" the", b" ", b"\xc3", b"\xa9"]


def test_the_byte_tokenizer_renders_chats_with_its_simple_template() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert ids == tokenizer.encode("<|user|>\nhi\n<|assistant|>\n")
    assert tokenizer.token_bytes(0xE6) == b"\xe6" and tokenizer.token_bytes(257) == b"</s>"
    assert tokenizer.eos_token_ids == (ByteTokenizer.EOS,)


def test_builtin_models_load_the_byte_tokenizer() -> None:
    model = ServedModel(name="mini", uri="builtin://tiny-llama-mini")
    assert isinstance(load_tokenizer(model, 0), ByteTokenizer)


def test_other_models_load_the_tokenizer_in_their_directory(chatml_dir: Path) -> None:
    tokenizer = load_tokenizer(ServedModel(name="m", uri=f"file://{chatml_dir}"), 0)
    assert isinstance(tokenizer, HfTokenizer) and 0 in tokenizer.eos_token_ids


def test_an_unusable_model_directory_names_the_uri(tmp_path: Path) -> None:
    model = ServedModel(name="m", uri=f"file://{tmp_path}/absent")
    with pytest.raises(ArtifactError, match="absent"):
        load_tokenizer(model, 3)
