"""The levers' set-up: each chosen once from the config, before the loop, and handed to it as a mode it
runs in, the micro-step's loss function or the step reader. The loop itself never asks which is on."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Sequence

import torch

from tangpoem.config import Config
from tangpoem.errors import InputError, setting
from tangpoem.runtime import Distributed
from tangpoem.tokens import EncodedRow

MicroLoss = Callable[[Sequence[EncodedRow], int, bool], torch.Tensor]  # (rows, answer tokens of the step, last micro-batch)


def check_training_levers(cfg: Config, device: torch.device) -> None:
    """Refuse, before anything is loaded, the levers this machine cannot run."""
    from tangpoem.fast.attention import check_varlen_device

    if cfg.varlen_attention and (why := check_varlen_device(device)):
        raise InputError(f"config key 'varlen_attention' = True: {why}; set {setting('varlen_attention', False)}")


def prepare_base(base: torch.nn.Module, cfg: Config, dtype: torch.dtype) -> torch.nn.Module:
    """dequantize_base: the NF4 weights dequantized once, before the adapters are added."""
    if cfg.dequantize_base:
        from tangpoem.fast.dense import dequantize_4bit_layers

        dequantize_4bit_layers(base, dtype)
    return base


def compile_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer (regional compilation): identical layers reuse the compiled code, and
    the norms, RoPE, SwiGLU and LoRA's small ops become a few fused kernels. Sequence lengths vary from step
    to step, so the layers are compiled for dynamic shapes."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def enter_training_modes(stack: contextlib.ExitStack, model: torch.nn.Module, cfg: Config, autocast: bool,
                         log: Callable[[str], None]) -> None:
    """The modes the loop runs in (generation afterwards needs sdpa's masks and peft's own forwards)."""
    from tangpoem.fast.attention import varlen_attention
    from tangpoem.fast.fused import fused_lora, fused_rms_norm

    if cfg.varlen_attention:
        stack.enter_context(varlen_attention(model))
    if autocast:
        from peft.helpers import disable_input_dtype_casting

        # Under autocast the LoRA matmuls run in the compute dtype whatever their input's dtype, so peft's
        # cast of each LoRA input to the adapters' fp32 only adds copies: the matmuls see the same values.
        stack.enter_context(disable_input_dtype_casting(model))
    for key, mode, what in (("fused_rms_norm", fused_rms_norm, "RMSNorm layers of forward(hidden_states)"),
                            ("fused_lora", fused_lora, "peft LoRA Linear layers")):
        if getattr(cfg, key):
            if not (count := stack.enter_context(mode(model))):
                raise InputError(f"config key '{key}' = True: this model has no {what} to fuse; set {setting(key, False)}")
            log(f"fused: {count} {what}")
    if cfg.compile:
        log(f"compile: {compile_layers(model)} decoder layers (the first steps are slower)")


@contextlib.contextmanager
def evaluation_modes(model: torch.nn.Module, cfg: Config) -> Iterator[None]:
    """Evaluation inside the loop (tangpoem.evaluate) pads rows and generates with a cache, without autocast:
    meanwhile peft casts each LoRA input to the adapter's dtype again (the loop, under autocast, does without:
    enter_training_modes), and with varlen_attention the model attends with sdpa; then back to the loop's modes."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tangpoem.fast.attention import attention_implementation

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    casting = [m.cast_input_dtype_enabled for m in layers]
    for layer in layers:  # fp32 adapters on bf16 or fp16 activations: without the cast, their products would refuse
        layer.cast_input_dtype_enabled = True
    try:
        with attention_implementation(model, "sdpa") if cfg.varlen_attention else contextlib.nullcontext():
            yield  # sdpa: what tangpoem loads the models with
    finally:
        for layer, enabled in zip(layers, casting):
            layer.cast_input_dtype_enabled = enabled


def graphed_micro_loss(stack: contextlib.ExitStack, model: torch.nn.Module, eager: MicroLoss,
                       run_batches: list[list[EncodedRow]], params: list[torch.nn.Parameter], pad_token_id: int,
                       dtype: torch.dtype, device: torch.device, ranks: Distributed, timings: dict[str, float],
                       log: Callable[[str], None]) -> tuple[MicroLoss, Any]:
    """cuda_graphs: every full micro-batch of this rank's share of the run padded to one shape and replayed as the
    captured forward and backward (a shorter last micro-batch runs eagerly). Returns the micro-step and the
    captured shape. Under DDP each rank captures its own graphs; `gradient_sync` averages the gradients."""
    from tangpoem.fast.graphs import GraphedLoss, static_shape

    shape = static_shape(run_batches)  # of the whole run, so that a resumed run replays the same graphs
    sample = next(m for m in run_batches if len(m) == shape.rows)
    captured = time.perf_counter()
    graphed = GraphedLoss(model, shape, sample, pad_token_id, dtype, device)
    stack.callback(graphed.release)  # also when the loop fails or is interrupted
    torch.cuda.synchronize(device)
    timings["capture_seconds"] = time.perf_counter() - captured
    log(f"cuda graphs: captured micro-batches of {shape.rows} rows padded to {shape.length} tokens "
        f"in {timings['capture_seconds']:.1f} s" + (f" on each of {ranks.world_size} GPUs" if ranks.world_size > 1 else ""))

    def micro_loss(rows: Sequence[EncodedRow], num_items: int, last: bool) -> torch.Tensor:
        if not graphed.fits(rows):
            return eager(rows, num_items, last)
        graphed.own_gradients(params)
        return graphed(rows) * (ranks.world_size / num_items)  # under DDP, the ranks' mean is the step's loss

    return micro_loss, shape


def step_reader(cfg: Config, device: torch.device, ranks: Distributed, steps_per_epoch: int) -> Any:
    """deferred_reads on a GPU: each step read once the next is queued; on a CPU deferring gains nothing."""
    from tangpoem.callbacks import StepReader
    from tangpoem.fast.reads import DeferredStepReader

    return (DeferredStepReader if cfg.deferred_reads and device.type == "cuda" else StepReader)(ranks, steps_per_epoch)


def ddp_hooks(cfg: Config, ranks: Distributed) -> bool:
    """Whether DDP's own hooks average the gradients (torch's DistributedDataParallel wraps the model): under
    DDP, except with cuda_graphs, whose captured backward the hooks cannot join (gradient_sync does it then)."""
    return ranks.world_size > 1 and not cfg.cuda_graphs


def gradient_sync(cfg: Config, params: list[torch.nn.Parameter], ranks: Distributed) -> Callable[[], None]:
    """What makes the ranks' gradients one before each optimizer step. One GPU, or DDP's own hooks (which
    all-reduce during the backward): nothing. Under DDP with cuda_graphs, whose captured backward DDP's hooks
    cannot join: every trainable parameter's gradient becomes a view of one flat buffer per dtype, and
    the step's gradients are averaged over the ranks in one all-reduce of each buffer, outside the graphs.
    The ranks start from rank 0's parameters, as DDP's do."""
    if ranks.world_size == 1 or ddp_hooks(cfg, ranks):
        return lambda: None
    import torch.distributed as dist

    buckets = []
    for dtype in sorted({p.dtype for p in params}, key=str):
        group = [p for p in params if p.dtype == dtype]
        flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=group[0].device)
        offset = 0
        for param in group:
            dist.broadcast(param.data, src=0)
            param.grad = flat[offset : offset + param.numel()].view_as(param)  # accumulated into in place
            offset += param.numel()
        buckets.append(flat)

    def average_over_ranks() -> None:
        for flat in buckets:
            dist.all_reduce(flat)  # a sum: gloo (the CPU's backend) has no average
            flat.div_(ranks.world_size)

    return average_over_ranks
