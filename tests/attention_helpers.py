"""A reference for the varlen kernel, so that its plumbing is tested on CPU."""

import torch


def reference_kernel(query, key, value, bounds, longest, scale):
    """Causal sdpa row by row: what the varlen kernel computes, on any device."""
    group = query.shape[1] // key.shape[1]
    outs = []
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs)
