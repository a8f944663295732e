"""Fewer element-wise kernels in a training step: the same math, fused into ops PyTorch already has.

Once CUDA graphs remove the CPU's launch cost, a LoRA step of a 7B model waits on memory-bound
element-wise kernels, each reading and writing a (tokens x hidden) tensor. Two sources of them have
a fused op in PyTorch itself (no compiling, no extra package):
- transformers' Llama/Mistral RMSNorm is about eight kernels forward (casts to fp32 and back, pow, mean,
  rsqrt, two muls) and more backward; `torch.nn.functional.rms_norm` is one fused kernel forward on CUDA
  (and fused ones backward).
- peft's LoRA adds `lora_B(h) * scaling` to the base output: a matmul, a mul and an add forward, and a
  mul of the full gradient backward; over a 4-bit base (peft's bnb Linear4bit) it first copies the base output
  too ("defensively", for older torch versions). `result.addmm_(h, B.T, alpha=scaling)` is one matmul whose
  epilogue does the scale and the add, on the base output itself; backward, the scale falls on the rank-r
  tensors only. On a T4 those full-size passes are memory-bound: each module's output read and written ~3 times.
Both compute the same values up to rounding (one rounding where the originals round twice). They are
loop modes, like `attention.varlen_attention`: entered for training, left before generation.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from typing import Any, Iterator

import torch


def _is_rms_norm(module: torch.nn.Module) -> bool:
    """A Llama-family norm (MistralRMSNorm, LlamaRMSNorm, ...): a weight, an epsilon and forward(hidden_states)
    only (gated or grouped variants take more arguments, and compute something else)."""
    cls = type(module)
    return (cls.__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight")
            and list(inspect.signature(cls.forward).parameters) == ["self", "hidden_states"])


def rms_norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm as one op, where input and weight share a dtype (fp32 statistics inside
    the kernel, as transformers computes them); otherwise transformers' own forward."""
    if hidden_states.dtype != self.weight.dtype:  # e.g. fp32 norms (kbit_fp32_upcast) on bf16 activations
        return type(self).forward(self, hidden_states)
    # autocast may list rms_norm as an fp32 op; the kernel already keeps its statistics in fp32
    with torch.autocast(hidden_states.device.type, enabled=False):
        return torch.nn.functional.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft's forward of a LoRA Linear with one plain adapter, the scale and the add folded into the
    B matmul; any other case (merged, disabled, several adapters, DoRA, a LoRA bias, extra arguments)
    goes to peft."""
    adapters = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1:
        return type(self).forward(self, x, *args, **kwargs)
    name = adapters[0]
    if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
        return type(self).forward(self, x, *args, **kwargs)  # DoRA and other variants, LoRA biases: peft's
    lora_A, lora_B = self.lora_A[name], self.lora_B[name]
    if x.dtype != lora_A.weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return type(self).forward(self, x, *args, **kwargs)  # peft casts the input; addmm would refuse mixed dtypes
    rows = x.reshape(-1, x.shape[-1])
    result = self.base_layer(rows)  # 2-D, and no view: an in-place op on a view would make autograd copy it
    hidden = lora_A(self.lora_dropout[name](rows))  # the same order as peft: base, then dropout's random mask
    # In place: the base matmul keeps its inputs for backward, not its output, so the output may take the
    # sum (an out-of-place addmm would first copy it). Autocast skips in-place ops: cast as it would.
    result.addmm_(hidden.to(result.dtype), lora_B.weight.t().to(result.dtype), alpha=self.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])


@contextlib.contextmanager
def _instance_forwards(modules: list[torch.nn.Module], forward: Any) -> Iterator[int]:
    # A module whose forward is already set on the instance (accelerate's device hooks, an enclosing block
    # of this kind) keeps it: replacing it would bypass the hook, and restoring would undo the outer block.
    patched = [m for m in modules if "forward" not in m.__dict__]
    for module in patched:
        module.forward = types.MethodType(forward, module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # the class's forward again


def fused_rms_norm(model: torch.nn.Module) -> contextlib.AbstractContextManager[int]:
    """Within the block every RMSNorm of `model` runs `rms_norm_forward`; yields how many were switched."""
    return _instance_forwards([m for m in model.modules() if _is_rms_norm(m)], rms_norm_forward)


def _lora_linear_classes() -> tuple[type, ...]:
    """peft's LoRA Linear, and its LoRA layer over a bitsandbytes 4-bit Linear where bitsandbytes is installed."""
    from peft.tuners.lora import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # no bitsandbytes: peft defines no 4-bit layers
        return (Linear,)
    return (Linear, Linear4bit)


def fused_lora(model: torch.nn.Module) -> contextlib.AbstractContextManager[int]:
    """Within the block every peft LoRA Linear of `model` (over a dense or a 4-bit base) runs `lora_forward`;
    yields how many were switched."""
    classes = _lora_linear_classes()
    return _instance_forwards([m for m in model.modules() if type(m) in classes], lora_forward)
