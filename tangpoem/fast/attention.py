"""Attention over packed rows with PyTorch's variable-length FlashAttention, for training on sm80+ GPUs.

Packed rows (`tokens.pack`) are one sequence whose positions restart at each row. With "sdpa",
transformers builds a (T x T) block-diagonal mask for them; the kernel then computes every block of
it (for 16 rows about 16x the work of the rows alone), and cuDNN's attention spends milliseconds of
CPU a call planning for each new length. `torch.nn.attention.varlen.varlen_attn` takes the rows'
boundaries instead (cumulative lengths) and attends within each row only. It is registered with
transformers' AttentionInterface, which the model calls in place of sdpa; with an attention
implementation transformers has no mask function for, it builds no mask at all.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import torch

VARLEN = "tangpoem_varlen"


def varlen_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor,
                  longest: int, scale: float) -> torch.Tensor:
    """Causal attention within each [bounds[i], bounds[i+1]) span; (T, H, D) tensors, key/value may have fewer heads."""
    from torch.nn.attention.varlen import varlen_attn

    params = _parameters(varlen_attn)
    # torch 2.10 spelled causal as is_causal=True; later versions as a (left, right) window
    kwargs: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # each query head h reads key/value head h // group, as transformers' repeat_kv
            group = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - query.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"this torch's varlen_attn has no scale argument and the model's scale is {scale}")
    return varlen_attn(query, key, value, bounds, bounds, longest, longest, **kwargs)


@functools.cache
def _parameters(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                             max_length_q: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch=1, heads, T, D) in, (1, T, heads, D) out."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"attention {VARLEN!r} needs packed rows: pass tokens.packed_kwargs(lengths) to the model")
    if query.shape[0] != 1 or attention_mask is not None or dropout:
        raise ValueError(f"attention {VARLEN!r} takes one packed sequence, no mask and no attention dropout")
    if sliding_window is not None and max_length_q > sliding_window:
        raise ValueError(f"attention {VARLEN!r}: rows of up to {max_length_q} tokens exceed the model's sliding window {sliding_window}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # (1, H, T, D) -> (T, H, D): for transformers' projections this is the original contiguous layout
    out = varlen_kernel(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                        cu_seq_lens_q, max_length_q, scale)
    return out.unsqueeze(0), None


def check_varlen_device(device: torch.device) -> str | None:
    """Why this device cannot run the varlen kernel, or None if it can (FlashAttention needs sm80+)."""
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        return f"it needs torch.nn.attention.varlen (torch 2.10 or newer), not in torch {torch.__version__}"
    if device.type != "cuda":
        return f"FlashAttention needs a CUDA GPU, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"FlashAttention needs compute capability 8.0 or newer; this GPU has {major}.{minor} (a T4 has 7.5)"
    return None


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Within the block, `model` (a transformers model or a peft wrapper of one) attends with `name`;
    afterwards with what it had before."""
    pretrained = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = pretrained.config._attn_implementation
    pretrained.set_attn_implementation(name)
    try:
        yield
    finally:
        pretrained.set_attn_implementation(previous)


@contextlib.contextmanager
def varlen_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, `model` attends with the varlen kernel; afterwards with what it had before
    (generation needs masks and a cache, which varlen does not take)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    with attention_implementation(model, VARLEN):
        yield
