"""Tokenization with label masking: the loss sees the poem's continuation and one EOS, nothing else."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from tangpoem.data import Row
from tangpoem.errors import InputError
from tangpoem.prompt import build_prompt

IGNORE_INDEX = -100  # labels with this value are left out of the loss (torch's cross_entropy default)


def encode_prompt(tokenizer: Any, instruction: str, poem_input: str, mode: str = "course") -> list[int]:
    """Token ids of a prompt: BOS + prompt text, never an EOS. Training and generation both use this.

    The ids are built explicitly rather than with `add_special_tokens=True`, because tokenizers
    configured like the homework's (`add_eos_token=True`) would otherwise append `</s>` after `[/INST]`.
    """
    text = build_prompt(tokenizer, instruction, poem_input, mode)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):  # chat templates usually write BOS themselves
        ids = [bos] + ids
    return ids


@dataclass
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool  # the answer was cut to fit cutoff_len (and so carries no EOS)


def encode_training_row(tokenizer: Any, row: Row, cutoff_len: int, mode: str = "course", index: int = 0) -> EncodedRow:
    """Prompt and answer are tokenized separately and concatenated, so no token merge across the
    boundary can move the mask: every prompt token is IGNORE_INDEX, the answer and EOS are learned."""
    prompt_ids = encode_prompt(tokenizer, row.instruction, row.input, mode)
    answer_ids = tokenizer(row.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= cutoff_len:
        raise InputError(
            f"training record {index}: the prompt alone is {len(prompt_ids)} tokens, cutoff_len is {cutoff_len}; "
            "raise cutoff_len (prompts are never cut)"
        )
    room = cutoff_len - len(prompt_ids)
    truncated = len(answer_ids) > room
    answer_ids = answer_ids[:room]
    return EncodedRow(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids, truncated)


@dataclass
class EncodedDataset:
    rows: list[EncodedRow]

    @functools.cached_property
    def lengths(self) -> tuple[int, ...]:
        """Each row's tokens, computed once (every training step's row order is looked up by them)."""
        return tuple(len(r.input_ids) for r in self.rows)

    @property
    def num_truncated(self) -> int:
        return sum(r.truncated for r in self.rows)

    @property
    def num_label_tokens(self) -> int:
        return count_label_tokens(self.rows)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of every row's tokens and labels: the same data, prompt, tokenizer and cutoff give the same."""
        import hashlib

        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(repr((row.input_ids, row.labels)).encode())
        return digest.hexdigest()

    def summary(self) -> str:
        return (
            f"{len(self.rows)} rows, {sum(self.lengths)} tokens (longest {max(self.lengths)}), "
            f"{self.num_label_tokens} learned; {self.num_truncated} answers cut to fit cutoff_len"
        )


def count_label_tokens(rows: Sequence[EncodedRow]) -> int:
    """Tokens the loss sees. The first position is never a label (it is BOS), so this equals what the
    shifted loss counts."""
    return sum(sum(label != IGNORE_INDEX for label in r.labels) for r in rows)


def encode_training_rows(tokenizer: Any, rows: Sequence[Row], cutoff_len: int, mode: str = "course") -> EncodedDataset:
    return EncodedDataset([encode_training_row(tokenizer, row, cutoff_len, mode, i) for i, row in enumerate(rows)])


def collate(rows: Sequence[EncodedRow], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch on the right to its longest row; labels keep their mask and padding is IGNORE_INDEX.

    Unlike the homework's DataCollatorForLanguageModeling, this never rebuilds labels from input_ids.
    """
    longest = max(len(r.input_ids) for r in rows)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack(rows: Sequence[EncodedRow]) -> dict[str, torch.Tensor]:
    """Padding-free batch: the rows end to end in one sequence, positions restarting at each row.

    With no attention mask, transformers builds a block-diagonal causal mask from the restarting
    position_ids, so no row attends to another. The first label of every row is a prompt token
    (IGNORE_INDEX), so the last token of one row is never trained to predict the next row."""
    input_ids = torch.tensor([t for r in rows for t in r.input_ids]).unsqueeze(0)  # (1, N)
    labels = torch.tensor([t for r in rows for t in r.labels]).unsqueeze(0)
    position_ids = torch.cat([torch.arange(len(r.input_ids)) for r in rows]).unsqueeze(0)
    assert all(r.labels[0] == IGNORE_INDEX for r in rows)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets) of one packed sequence's labels (1, N): the positions t whose next token
    t + 1 is learned, and those tokens. The lm_head and the loss need nothing else."""
    targets = labels[0, 1:]
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    return keep, targets[keep]


def packed_kwargs(lengths: Sequence[int], device: torch.device | str) -> dict[str, Any]:
    """The model-call kwargs that tell the varlen kernel where each packed row starts and ends
    (transformers' names for them, as its own padding-free collator passes them)."""
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    longest = max(lengths)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
