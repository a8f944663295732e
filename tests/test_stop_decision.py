import math

import pytest
import torch

from tangpoem.stop_decision import StopByProbability

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
