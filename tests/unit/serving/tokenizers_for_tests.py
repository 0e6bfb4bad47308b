"""Real trained tokenizers, small enough to build in a test.

A byte-level BPE (as GPT-2, Llama 3 and Qwen2 use) with few merges splits non-ASCII
characters across tokens, which is what incremental detokenization must get right. A
Llama-2-style SentencePiece BPE (word-start markers, byte fallback) renders a token
differently after another token than at the start, which is what decoding with context
must get right.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "the fleet serves models on many replicas",
    "hello world, the quick brown fox jumps over the lazy dog",
    "tokens stream to the client one at a time",
] * 20
"""English only, so the merges never join the bytes of a non-ASCII character."""

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MULTILINGUAL = "héllo wörld 日本語 🙂 naïve café ½ — “quoted” ∑ \U0001d518"


def byte_level_bpe(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ChatML special tokens; ``<|im_end|>`` is its EOS."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML,
        clean_up_tokenization_spaces=False,
    )


def sentencepiece_bpe() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: BOS added, ``▁`` word starts, ``<0xNN>`` byte fallback."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    letters = sorted({char for line in CORPUS for char in line.replace(" ", "")})
    pieces = ["\u2581", *letters, "\u2581t", "\u2581th", "\u2581the", "he", "\u2581w", "or"]
    vocab = {token: index for index, token in enumerate([*specials, *byte_tokens, *pieces])}
    merges = [("\u2581", "t"), ("\u2581t", "h"), ("\u2581th", "e"), ("h", "e"), ("\u2581", "w")]
    merges.append(("o", "r"))
    sp = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    sp.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    sp.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    sp.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=sp,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        clean_up_tokenization_spaces=False,
    )


def save_model_dir(
    tokenizer: PreTrainedTokenizerFast, directory: Path, generation_eos: object = None
) -> Path:
    """``directory`` laid out as a model: the tokenizer, a config, a (dummy) weights file
    and, if given, a generation config with ``eos_token_id``."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "model.safetensors").write_bytes(b"")
    if generation_eos is not None:
        config = {"eos_token_id": generation_eos}
        (directory / "generation_config.json").write_text(json.dumps(config))
    return directory
