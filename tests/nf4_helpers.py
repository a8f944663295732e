"""NF4 layers built on the CPU (bitsandbytes quantizes there too), so that 4-bit paths are tested without a GPU."""

import torch


def nf4_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """A bitsandbytes Linear4bit holding `linear`'s weight in NF4 with double quantization, as Breeze is loaded."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    # bitsandbytes quantizes when the weight moves to a device; on the CPU that is _quantize
    layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)._quantize("cpu")
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer
