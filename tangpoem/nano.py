"""tangpoem-nano: a small pre-trained Tang-poem model that ships inside the package.

Mistral architecture (every code path but NF4 is the one Breeze takes), ~7 M parameters, one token
per character. `scripts/pretrain_nano.py` makes it from the 全唐詩 corpus with the pieces below:
the corpus reader, our held-out split, the tokenizer and the model shape.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from tangpoem.errors import InputError

NANO_NAME = "tangpoem-nano"
NANO_DIR = Path(__file__).parent / "nano_model"  # config.json, model.safetensors, tokenizer.json
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
HELDOUT_EVERY = 100  # about 1 poem in 100 of the regular poems after the course's 5001 is held out


# ----------------------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Poem:
    index: int  # line number in tang_poems.jsonl, 0-based
    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.paragraphs)


# Editors' notes inside the poems ("（一作…）", "〖…〗", "[…]"): not poetry, so not for the model.
EDITORIAL_NOTE = re.compile(r"（[^）]*）|〖[^〗]*〗|\[[^\]]*\]|\{[^}]*\}")


def read_corpus(path: str | Path) -> Iterator[Poem]:
    """Poems of tang_poems.jsonl ({"author", "title", "paragraphs": [...]}, one per line), notes removed."""
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            try:
                record = json.loads(line)
                paragraphs = tuple(p for p in (EDITORIAL_NOTE.sub("", str(p)).strip() for p in record["paragraphs"]) if p)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{index + 1}: not a poem record ({e})") from None
            if paragraphs:
                yield Poem(index, EDITORIAL_NOTE.sub("", str(record.get("title", ""))).strip(), paragraphs)


VERSE_SPLIT = re.compile(r"[，。！？；、]")


def regular_verses(poem: Poem) -> list[str] | None:
    """The verses of a regular jueju or lüshi (4 or 8 verses, all 5 or all 7 characters), else None."""
    verses = [v for v in VERSE_SPLIT.split(poem.text) if v]
    if len(verses) in (4, 8) and len({len(v) for v in verses}) == 1 and len(verses[0]) in (5, 7):
        if all(len(p) == 2 * len(verses[0]) + 2 for p in poem.paragraphs):  # each paragraph one punctuated couplet
            return verses
    return None


def is_heldout(poem: Poem) -> bool:
    """Our evaluation split: regular poems past the course's 5001 rows, picked by a hash of their text.
    They are kept out of pre-training, and the course's fine-tuning rows never contain them."""
    if poem.index < 5001 or regular_verses(poem) is None:
        return False
    return int(hashlib.sha1(poem.text.encode("utf-8")).hexdigest(), 16) % HELDOUT_EVERY == 0


def heldout_rows(corpus_path: str | Path, limit: int | None = None) -> tuple[list[Any], list[str]]:
    """Held-out poems in the course's test format: (rows with the first couplet as input, GT lines)."""
    from tangpoem.data import Row
    from tangpoem.prompt import INSTRUCTION

    rows, gt = [], []
    for poem in read_corpus(corpus_path):
        if is_heldout(poem):
            verses = regular_verses(poem)
            assert verses is not None
            rows.append(Row(INSTRUCTION, poem.paragraphs[0], "".join(poem.paragraphs[1:])))
            gt.append("\t".join(verses[2:]))
            if limit and len(rows) == limit:
                break
    return rows, gt


# ----------------------------------------------------------------------------- pre-training documents

# Nano learns the [INST] format on a *different* task (a poem from its title), as Breeze-Instruct knows
# its chat format before the homework; continuing a first couplet is left for LoRA fine-tuning to teach.
TITLE_INSTRUCTION = "請以下面的題目寫一首唐詩。"


def pretraining_document(tokenizer: Any, poem: Poem, rng: Any, instruct_share: float = 0.5) -> list[int]:
    """Token ids of one pre-training document, between BOS and EOS: either the poem as plain text
    (half of those with its title on a first line), or a title-to-poem request in the course prompt."""
    from tangpoem.data import Row
    from tangpoem.tokens import encode_training_row

    if poem.title and rng.random() < instruct_share:
        row = Row(TITLE_INSTRUCTION, poem.title, poem.text)
        return encode_training_row(tokenizer, row, cutoff_len=100_000).input_ids
    text = f"{poem.title}\n{poem.text}" if poem.title and rng.random() < 0.5 else poem.text
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


# ----------------------------------------------------------------------------- tokenizer and model

def build_tokenizer(texts: Iterable[str]) -> Any:
    """One token per character of `texts`, plus printable ASCII and newline (the course prompt's
    English and markup), with Llama's conventions otherwise: ▁ for spaces, BOS added, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = set(string.printable) | {"▁"}
    for text in texts:
        chars.update(text)
    chars -= set(string.whitespace) - {"\n"}  # spaces become ▁; tabs and CRs are not in poems or the prompt
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    # No ▁ prefix before the first word: with one token per character a lone "▁" would start every
    # answer, and the homework's no_repeat_ngram_size=3 then forbids it after "[/INST]" (the prompt
    # already holds "INST]▁" from "[INST] <<SYS>>"). Breeze's "▁綺"-style pieces never hit this.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def model_config(tokenizer: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=True,  # keeps the shipped file under 20 MB
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )


def _require_weights() -> None:
    if not (NANO_DIR / "model.safetensors").is_file():
        raise InputError(f"{NANO_DIR}: the {NANO_NAME} weights are not in this installation")


def load_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    _require_weights()
    return PreTrainedTokenizerFast.from_pretrained(NANO_DIR)


def load_model() -> torch.nn.Module:
    """The packaged model in float32 (it ships in float16 to stay small)."""
    from transformers import AutoModelForCausalLM

    _require_weights()
    return AutoModelForCausalLM.from_pretrained(NANO_DIR, dtype=torch.float32)
