"""CUDA-graph training's static shapes: padding changes neither the loss nor what any row attends to."""

from __future__ import annotations

import pytest
import torch

import tangpoem.fast.attention as attention
from tangpoem.data import load_train_rows
from tangpoem.errors import InputError
from tangpoem.fast.graphs import PackedLoss, static_batch, static_shape
from tangpoem.model import load_tokenizer
from tangpoem.tiny import build_model
from tangpoem.tokens import count_label_tokens, encode_training_rows, pack
from tangpoem.train import answer_logits_loss
from attention_helpers import reference_kernel


def _rows(tiny_config, n):
    cfg = tiny_config(model_name_or_path="tiny-mistral")
    tokenizer = load_tokenizer(cfg)
    return tokenizer, encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, n), cfg.cutoff_len).rows


def test_static_shape_holds_every_full_micro_batch(tiny_config):
    _, rows = _rows(tiny_config, 22)
    batches = [rows[0:8], rows[8:16], rows[16:22]]  # the last one is short: it runs eagerly
    shape = static_shape(batches)
    assert shape.rows == 8 and shape.length % 64 == 0
    assert shape.length >= max(sum(len(r.input_ids) for r in b) for b in batches[:2]) + 2
    assert shape.answers == max(count_label_tokens(b) for b in batches[:2])
    with pytest.raises(ValueError, match="do not fit"):
        static_batch(batches[2], shape, 0)


def test_padded_batch_gives_the_packed_loss(tiny_config, monkeypatch):
    """Summed over the padded batch (pad row and padded answer positions ignored), the loss is the
    unpadded packed batch's, for each micro-batch of a shape fitted to both."""
    monkeypatch.setattr(attention, "varlen_kernel", reference_kernel)
    tokenizer, rows = _rows(tiny_config, 10)
    model = build_model("tiny-mistral", tokenizer).eval()
    batches = [rows[:5], rows[5:]]
    shape = static_shape(batches)
    for micro in batches:
        input_ids, position_ids, bounds, keep, targets = static_batch(micro, shape, tokenizer.pad_token_id)
        used = sum(len(r.input_ids) for r in micro)
        assert input_ids.shape == (1, shape.length) and keep.shape == targets.shape == (shape.answers,)
        assert bounds[-2] == used and bounds[-1] == shape.length  # the pad row is a row of its own
        assert position_ids[0, used:].tolist() == list(range(shape.length - used))
        assert (targets == -100).sum() == shape.answers - count_label_tokens(micro)
        num_items = count_label_tokens(micro)
        with torch.no_grad():
            expected = answer_logits_loss(model, pack(micro), num_items)
            with attention.varlen_attention(model):
                padded = PackedLoss(model, shape.length)(input_ids, position_ids, bounds, keep, targets) / num_items
        assert torch.allclose(padded, expected, atol=1e-5)


def test_own_gradients_never_lets_a_replay_buffer_become_a_grad():
    from tangpoem.fast.graphs import GraphedLoss

    missing, present = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    present.grad = kept = torch.full((2,), 5.0)
    GraphedLoss.own_gradients([missing, present])
    assert torch.equal(missing.grad, torch.zeros(3)) and present.grad is kept


def test_cuda_graphs_are_refused_where_they_cannot_work(tiny_config):
    """Config rules: the captured loss is varlen's with answer-only logits; no compile, no checkpointing."""
    layout = {"padding_free": True, "answer_logits_only": True, "varlen_attention": True}
    with pytest.raises(InputError, match="cuda_graphs.*needs varlen_attention=true"):
        tiny_config(cuda_graphs=True, padding_free=True, answer_logits_only=True)
    with pytest.raises(InputError, match="cuda_graphs.*needs answer_logits_only=true"):
        tiny_config(cuda_graphs=True, padding_free=True, varlen_attention=True)
    with pytest.raises(InputError, match="cuda_graphs.*needs gradient_checkpointing=false"):
        tiny_config(cuda_graphs=True, gradient_checkpointing=True, **layout)
    with pytest.raises(InputError, match="cuda_graphs.*needs compile=false"):
        tiny_config(cuda_graphs=True, compile=True, **layout)
