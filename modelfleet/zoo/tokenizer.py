"""Byte-level BPE tokenizers trained on the skills' own text, with a ChatML chat template.

Models in the zoo must not share one vocabulary, so that anything combining them (routing,
fusion, distillation) meets the mismatch real fleets have. Each tokenizer is trained from
a seed on examples of the skills, so it is reproducible and its merges fit the text the
models see. Digits are always split one per token, as Qwen2's pre-tokenizer does, because
a model cannot learn carries over digits glued into arbitrary chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelfleet.zoo.skills import SKILLS, Split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
"""Ids 0, 1, 2 in every zoo vocabulary. ``<|im_end|>`` closes every turn and is the EOS."""
END_OF_TEXT_ID = SPECIAL_TOKENS.index(END_OF_TEXT)
IM_END_ID = SPECIAL_TOKENS.index(IM_END)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML, as Qwen uses, without a default system turn: prompts stay short and cheap."""

PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's split: words keep a leading space, every digit stands alone."""


@dataclass(frozen=True)
class TokenizerSpec:
    """How to train one vocabulary: its size, and how much of each skill's text it learns
    from. Different mixes give different merges, hence different token ids for one text."""

    name: str
    vocab_size: int
    examples: dict[str, int]
    """Training-split examples per skill name."""
    seed: int


def _render_training_text(spec: TokenizerSpec) -> Iterator[str]:
    """Turns of the skills' training splits, as the chat template lays them out."""
    for name, count in spec.examples.items():
        for example in SKILLS[name].take(Split.TRAIN, spec.seed, count):
            yield f"user\n{example.prompt}"
            yield f"assistant\n{example.answer}"


def train_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer per ``spec``, with the special tokens and chat template.
    The tokenizer libraries are imported here: the specs alone (recipes) need neither."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_render_training_text(spec), trainer=trainer)
    if bpe.get_vocab_size() != spec.vocab_size:
        raise ValueError(
            f"tokenizer {spec.name}: learned {bpe.get_vocab_size()} tokens, not "
            f"{spec.vocab_size}; train it on more text"
        )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token=END_OF_TEXT,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


TOKENIZERS: dict[str, TokenizerSpec] = {
    spec.name: spec
    for spec in (
        TokenizerSpec(
            name="zoo-bpe-384",
            vocab_size=384,
            examples={
                "addition": 3000,
                "sorting": 3000,
                "maximum": 3000,
                "reversal": 500,
                "facts": 500,
            },
            seed=1,
        ),
        TokenizerSpec(
            name="zoo-bpe-640",
            vocab_size=640,
            examples={
                "reversal": 3000,
                "facts": 3000,
                "addition": 1000,
                "sorting": 1000,
                "maximum": 1000,
            },
            seed=2,
        ),
    )
}
"""The zoo's vocabularies: a small one learned mostly from numbers, a larger one mostly
from words."""
