"""Stopping by the probability of stopping: a logits processor, to sit right after the n-gram bans.

Why: the homework's decoding (temperature 0.1, top_p 0.3) is near-greedy, token by token. After a
couplet of continuation the choice is binary, stop or go on, but "go on" is spread over thousands of
first characters while "stop" is one token, so EOS wins whenever it beats the single likeliest
character: fine-tuned nano stops after 2 verses with P(EOS) near 0.2. Here the choice is made on
P(EOS) against P(anything else), at temperature 1, and everything else is sampled as before.
Not yet used by tangpoem.generate (see the nano-gains report); hooking it needs
`decoding.logits_processors` to insert it after DeviceNoRepeatNGram.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class StopByProbability(LogitsProcessor):
    """Rows where P(EOS) >= threshold must stop; in the others EOS is banned."""

    def __init__(self, eos_token_id: int, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.eos, self.threshold = eos_token_id, threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stop = scores.float().softmax(-1)[:, self.eos] >= self.threshold  # (B,)
        out = scores.masked_fill(stop[:, None], -float("inf"))
        out[:, self.eos] = torch.where(stop, torch.zeros_like(scores[:, self.eos]), torch.full_like(scores[:, self.eos], -float("inf")))
        return out
