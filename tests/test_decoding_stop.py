"""The stop decision on P(EOS) against going on (decoding.StopByProbability)."""

import math

import pytest
import torch

from tangpoem.decoding import StopByProbability

EOS = 0


def scores_with(p_eos: float, others: int = 50) -> torch.Tensor:
    """EOS at p_eos, the rest spread evenly over `others` tokens (each far below p_eos)."""
    rest = (1 - p_eos) / others
    return torch.tensor([[math.log(p_eos)] + [math.log(rest)] * others])


def test_a_spread_out_continuation_beats_a_single_likelier_eos():
    # P(EOS) = 0.2 is the likeliest single token (greedy would stop), but going on has 0.8.
    scores = scores_with(0.2)
    assert scores.argmax().item() == EOS
    out = StopByProbability(EOS)(torch.zeros(1, 3, dtype=torch.long), scores)
    assert out[0, EOS] == -math.inf and torch.isfinite(out[0, 1:]).all()
    assert torch.equal(out[0, 1:], scores[0, 1:])  # the rest is left to the usual sampling


def test_a_likely_stop_is_taken_and_rows_decide_independently():
    scores = torch.cat([scores_with(0.7), scores_with(0.1)])
    out = StopByProbability(EOS)(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out[0].argmax().item() == EOS and torch.isinf(out[0, 1:]).all()
    assert out[1, EOS] == -math.inf


def test_threshold_is_checked():
    with pytest.raises(ValueError):
        StopByProbability(EOS, threshold=0.0)


def test_the_config_puts_the_stop_decision_right_after_the_ngram_bans(tiny_config):
    from tangpoem import tiny
    from tangpoem.generate import fast_generation_config
    from tangpoem.model import fix_pad_token

    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES["tiny-mistral"]))
    _, processors = fast_generation_config(tiny_config(stop_by_probability=True), tokenizer)
    assert [type(p).__name__ for p in processors][:2] == ["DeviceNoRepeatNGram", "StopByProbability"]
    assert processors[1].eos == tokenizer.eos_token_id
    _, plain = fast_generation_config(tiny_config(), tokenizer)
    assert "StopByProbability" not in [type(p).__name__ for p in plain]  # the homework's decoding by default
