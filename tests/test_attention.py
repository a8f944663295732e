"""Varlen attention over packed rows: the plumbing on CPU (with a reference kernel), the real kernel on a GPU."""

from __future__ import annotations

import pytest
import torch

import tangpoem.fast.attention as attention
from tangpoem.errors import InputError
from tangpoem.model import load_tokenizer
from tangpoem.tiny import build_model
from tangpoem.tokens import encode_training_rows, pack, packed_kwargs
from tangpoem.data import load_train_rows
from attention_helpers import reference_kernel


def _packed(tiny_config, n=5):
    cfg = tiny_config(model_name_or_path="tiny-mistral")
    tokenizer = load_tokenizer(cfg)
    rows = encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, n), cfg.cutoff_len).rows
    return build_model("tiny-mistral", tokenizer).eval(), rows


def test_packed_kwargs_are_the_rows_cumulative_lengths():
    kwargs = packed_kwargs([3, 5, 2], "cpu")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 8, 10] and kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 5


def test_varlen_attention_gives_the_block_masked_sdpa_outputs(tiny_config, monkeypatch):
    """Through transformers' attention interface, the rows' boundaries reach the kernel, the layouts
    match and no row sees another; afterwards the model attends with sdpa again."""
    monkeypatch.setattr(attention, "varlen_kernel", reference_kernel)
    model, rows = _packed(tiny_config)
    batch = pack(rows)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        sdpa = model(**inputs, use_cache=False).logits
        with attention.varlen_attention(model):
            assert model.config._attn_implementation == attention.VARLEN
            varlen = model(**inputs, **packed_kwargs([len(r.input_ids) for r in rows], "cpu"), use_cache=False).logits
            with pytest.raises(ValueError, match="needs packed rows"):
                model(**inputs, use_cache=False)
        assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(varlen, sdpa, atol=1e-5)


def test_varlen_attention_needs_padding_free_and_a_flash_gpu(tiny_config):
    with pytest.raises(InputError, match="needs padding_free=true"):
        tiny_config(varlen_attention=True)
    if not torch.cuda.is_available():
        from tangpoem.train import train

        with pytest.raises(InputError, match="varlen_attention' = True: FlashAttention needs a CUDA GPU"):
            train(tiny_config(padding_free=True, varlen_attention=True, max_steps=1))


@pytest.mark.gpu
def test_varlen_kernel_matches_block_masked_sdpa_on_the_gpu(tiny_config):
    """The real kernel: the same bf16 logits, loss and input gradients as sdpa with the block-diagonal mask."""
    if attention.check_varlen_device(torch.device("cuda")):
        pytest.skip(attention.check_varlen_device(torch.device("cuda")))
    model, rows = _packed(tiny_config, n=16)
    model = model.to("cuda", torch.bfloat16)
    batch = {k: v.cuda() for k, v in pack(rows).items()}

    def run(**extra):
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False, **extra)
        out.loss.backward()
        return out.logits.float(), out.loss.float(), embeds.grad.float()

    sdpa = run()
    with attention.varlen_attention(model):
        varlen = run(**packed_kwargs([len(r.input_ids) for r in rows], "cuda"))
    assert torch.allclose(varlen[1], sdpa[1], rtol=1e-2)
    assert (varlen[0] - sdpa[0]).abs().max() < 0.05 * sdpa[0].abs().max()
    assert (varlen[2] - sdpa[2]).norm() < 0.05 * sdpa[2].norm()


def test_varlen_kernel_speaks_both_torch_spellings(monkeypatch):
    """torch 2.10 spells causal `is_causal=True` and has no grouped-query option; later versions take a
    window and `enable_gqa`. Either way the kernel gets causal attention over the rows' spans."""
    import torch.nn.attention.varlen as varlen

    torch.manual_seed(0)
    query, key, value = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    bounds = torch.tensor([0, 3, 7], dtype=torch.int32)
    expected = reference_kernel(query, key, value, bounds, 4, 8**-0.5)
    calls = []

    def newer(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(("newer", window_size, enable_gqa, scale))
        return reference_kernel(query, key, value, cu_seq_q, max_q, scale)

    def older(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
        calls.append(("older", is_causal, key.shape[1]))
        return reference_kernel(query, key, value, cu_seq_q, max_q, query.shape[-1] ** -0.5)

    for fake in (newer, older):
        monkeypatch.setattr(varlen, "varlen_attn", fake)
        assert torch.allclose(attention.varlen_kernel(query, key, value, bounds, 4, 8**-0.5), expected, atol=1e-6)
    assert calls == [("newer", (-1, 0), True, 8**-0.5), ("older", True, 4)]  # older: key/value heads repeated
    with pytest.raises(ValueError, match="no scale argument"):
        attention.varlen_kernel(query, key, value, bounds, 4, 0.5)


def test_rows_longer_than_the_sliding_window_are_refused(monkeypatch):
    monkeypatch.setattr(attention, "varlen_kernel", reference_kernel)
    q = torch.randn(1, 4, 10, 8)
    kwargs = packed_kwargs([6, 4], "cpu")
    out, _ = attention.varlen_attention_forward(None, q, q, q, None, sliding_window=8, **kwargs)
    assert out.shape == (1, 10, 4, 8)
    with pytest.raises(ValueError, match="exceed the model's sliding window 4"):
        attention.varlen_attention_forward(None, q, q, q, None, sliding_window=4, **kwargs)
