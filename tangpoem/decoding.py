"""Decoding rules (notebook 03): the homework's sampling, no-repeat n-grams computed on the device, and
an optional stop rule; as transformers LogitsProcessors, in transformers' own order."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


class DeviceNoRepeatNGram(LogitsProcessor):
    """The bans of transformers' NoRepeatNGramLogitsProcessor (a token may not complete an n-gram
    that already occurs in the sequence, prompt and padding included), computed with tensor ops on
    the device instead of Python loops over every row and position at every step."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.n = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.in_buffer(input_ids, input_ids.shape[1], scores)

    def in_buffer(self, input_ids: torch.LongTensor, length: torch.Tensor | int, scores: torch.FloatTensor) -> torch.FloatTensor:
        """The same bans, where `input_ids` is a buffer of fixed shape whose first `length` tokens are the sequence
        so far (a 0-d tensor in fast.decode's CUDA graph, where shapes cannot grow and no value may be read)."""
        n = self.n
        if input_ids.shape[1] < n:  # no complete n-gram yet: nothing to ban
            return scores
        windows = input_ids.unfold(1, n, 1)  # (B, L-n+1, n): every n-gram of the buffer
        within = torch.arange(windows.shape[1], device=input_ids.device) + n <= length  # (L-n+1,): in the sequence so far
        if n == 1:
            matches = within.expand(windows.shape[:2])
        else:  # what the next token would extend: the last n-1 tokens (indices clamped while fewer exist: nothing is within)
            last = (length - (n - 1) + torch.arange(n - 1, device=input_ids.device)).clamp(min=0)
            prefix = input_ids[:, last]  # (B, n-1)
            matches = (windows[:, :, : n - 1] == prefix[:, None, :]).all(-1) & within  # (B, L-n+1)
        counts = torch.zeros_like(scores, dtype=torch.int32).scatter_add_(1, windows[:, :, n - 1], matches.int())
        return scores.masked_fill(counts > 0, -float("inf"))


class StopByProbability(LogitsProcessor):
    """Stop or go on, decided on P(EOS) against P(anything else), at temperature 1: rows where
    P(EOS) >= threshold must stop, the others may not.

    Why: near-greedy decoding (the homework's temperature 0.1, top_p 0.3) picks EOS whenever it beats
    the single likeliest character, though "go on" is spread over thousands of characters: a model
    whose P(stop) after two verses is 0.2 stops there every time. Everything else is sampled as before."""

    def __init__(self, eos_token_id: int, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.eos, self.threshold = eos_token_id, threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stop = scores.float().softmax(-1)[:, self.eos] >= self.threshold  # (B,)
        out = scores.masked_fill(stop[:, None], -float("inf"))
        out[:, self.eos] = torch.where(stop, torch.zeros_like(scores[:, self.eos]), torch.full_like(scores[:, self.eos], -float("inf")))
        return out


def logits_processors(no_repeat_ngram_size: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                      stop_eos_token_id: int | None = None) -> LogitsProcessorList:
    """In transformers' own order: n-gram bans first, then temperature, top-k, top-p. With
    `stop_eos_token_id`, the stop decision (StopByProbability) comes right after the bans."""
    processors = LogitsProcessorList()
    if no_repeat_ngram_size > 0:
        processors.append(DeviceNoRepeatNGram(no_repeat_ngram_size))
    if stop_eos_token_id is not None:
        processors.append(StopByProbability(stop_eos_token_id))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors
