"""Tiny offline models for tests and CPU smoke runs: Mistral and Llama shapes, random weights.

Their tokenizers are made here with the `tokenizers` library and behave like Breeze's and
TAIDE's sentencepiece tokenizers: ▁ word marks with a prefix space, BOS added, no EOS added,
no pad token. A BPE trained on the course text gives real multi-character merges, so prompt /
answer boundary bugs and padding bugs show up here as they would on the real models.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from tangpoem.prompt import INSTRUCTION, course_prompt

# Two vocabularies of different sizes (as Breeze's and TAIDE's differ), so merges differ between them.
TINY_VOCAB_SIZES = {"tiny-mistral": 5000, "tiny-llama": 6000}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# The Llama-2 chat template (as TAIDE's), so the chat_template prompt mode can be tested offline.
LLAMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{% if loop.index0 == 0 %}{{ '[INST] ' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def _course_texts(data_dir: str | None = None) -> list[str]:
    """Text to train the tiny BPE on: the prompt's fixed parts and every poem of the course data."""
    from tangpoem.data import load_test_rows, load_train_rows

    texts = [course_prompt(INSTRUCTION, "")] * 100  # frequent enough that its ASCII gets merges too
    for row in [*load_train_rows(data_dir), *load_test_rows(data_dir)]:
        texts.extend([row.input, row.output or ""])
    return texts


# Chinese characters and full-width marks: with `cjk_alone`, each is a token of its own.
CJK = Regex("[\u3000-\u9fff\uff00-\uffef]")


@functools.lru_cache(maxsize=None)
def build_tokenizer(
    vocab_size: int = 6000, texts: tuple[str, ...] | None = None, data_dir: str | None = None, cjk_alone: bool = False
) -> PreTrainedTokenizerFast:
    """A Llama-style BPE tokenizer trained on the course text in `data_dir` (or on `texts`).
    `cjk_alone` keeps every Chinese character one token (the GPU benchmark's stand-in for Breeze's)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(CJK, behavior="isolated"), metaspace])
                         if cjk_alone else metaspace)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(list(texts) if texts else _course_texts(data_dir), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=LLAMA2_CHAT_TEMPLATE
    )


def build_model(name: str, tokenizer: Any, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny model; the same seed always gives the same weights."""
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if name == "tiny-mistral":
        return MistralForCausalLM(MistralConfig(sliding_window=None, **common))
    if name == "tiny-llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(TINY_VOCAB_SIZES)}")
