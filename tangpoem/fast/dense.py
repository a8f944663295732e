"""The NF4 weights as dense ones: dequantized once instead of in every matmul.

A 4-bit layer dequantizes its weight for every call; on a GPU with room for ~2 bytes a parameter
(~15 GB for Breeze), dequantizing once gives the same products without that per-call cost, in training
(`dequantize_base`) and in generation (`dense_generation`, or a merged model for export).
"""

from __future__ import annotations

import torch


def is_linear4bit(module: torch.nn.Module) -> bool:
    """A bitsandbytes Linear4bit, told by class name and module so that CPU-only installs need not import
    bitsandbytes (peft's LoRA wrapper of one is also called Linear4bit: it is not one)."""
    cls = type(module)
    return cls.__name__ == "Linear4bit" and cls.__module__.startswith("bitsandbytes")


def dequantized_weight(linear: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight of a Linear or a bitsandbytes Linear4bit: for NF4, exactly the values each
    4-bit matmul dequantizes to before multiplying."""
    if is_linear4bit(linear):
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(linear.weight.data, linear.weight.quant_state).to(dtype)
    return linear.weight.detach().to(dtype, copy=True)  # a copy: callers add LoRA deltas to it


def dense_linear(base: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Linear:
    """A frozen nn.Linear of `base`'s shape holding `weight` (and `base`'s bias, in weight's dtype)."""
    linear = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if base.bias is not None:
            linear.bias.copy_(base.bias.to(weight.dtype))
    return linear.requires_grad_(False)


def replace_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _not_quantized_any_more(model: torch.nn.Module) -> None:
    """Nothing is 4-bit after a dequantization: transformers' and peft's 4-bit paths must not be taken."""
    model.hf_quantizer = None  # generation: graphed_sampling may replay the decode step
    for flag in ("is_loaded_in_4bit", "is_quantized"):
        if hasattr(model, flag):
            setattr(model, flag, False)


@torch.no_grad()
def dequantize_4bit_layers(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace every Linear4bit of `model` (a base model, or the base layers under a peft model's adapters)
    with a frozen Linear holding its dequantized weight; returns how many. The products are the 4-bit
    layers' (which dequantize to the same weight and multiply, for more than one row), and an adapter
    above keeps its own arithmetic."""
    replaced = [(name, module) for name, module in model.named_modules() if is_linear4bit(module)]
    for name, module in replaced:
        replace_module(model, name, dense_linear(module, dequantized_weight(module, dtype)))
    _not_quantized_any_more(model.get_base_model() if hasattr(model, "get_base_model") else model)
    return len(replaced)


@torch.no_grad()
def merge_lora_dequantized(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A plain model: each NF4 layer dequantized to `dtype` with its LoRA delta added (the way peft and
    Unsloth merge a QLoRA adapter; peft's merge_and_unload on a 4-bit model would re-quantize the sum).
    Needs ~2 bytes a parameter of memory (~15 GB for Breeze)."""
    from peft.tuners.lora import LoraLayer

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    replacements: list[tuple[str, torch.nn.Module]] = []
    for name, module in root.named_modules():
        lora = isinstance(module, LoraLayer)
        if not (lora or is_linear4bit(module)) or any(name.startswith(done + ".") for done, _ in replacements):
            continue
        base = module.get_base_layer() if lora else module
        weight = dequantized_weight(base, dtype)
        if lora:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(dtype)
        replacements.append((name, dense_linear(base, weight)))
    for name, linear in replacements:
        replace_module(root, name, linear)
    for param in root.parameters():  # norms and embeddings that k-bit preparation cast to fp32
        param.data = param.data.to(dtype)
        param.requires_grad_(False)
    root.config.use_cache = True
    _not_quantized_any_more(root)
    return root.eval()
