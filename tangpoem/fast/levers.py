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


def check_training_levers(cfg: Config, device: torch.device, ranks: Distributed) -> None:
    """Refuse, before anything is loaded, the levers this machine cannot run."""
    from tangpoem.fast.attention import check_varlen_device

    if cfg.varlen_attention and (why := check_varlen_device(device)):
        raise InputError(f"config key 'varlen_attention' = True: {why}; set {setting('varlen_attention', False)}")
    if cfg.cuda_graphs and ranks.world_size > 1:
        raise InputError("config key 'cuda_graphs' = True: one GPU only (DDP's gradient hooks are not captured); "
                         f"set {setting('cuda_graphs', False)}")


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
    """Evaluation inside the loop (tangpoem.evaluate) pads rows and generates with a cache: with varlen_attention
    the model attends with sdpa meanwhile, then with the varlen kernel again."""
    if not cfg.varlen_attention:
        yield
        return
    from tangpoem.fast.attention import attention_implementation

    with attention_implementation(model, "sdpa"):  # what tangpoem loads the models with
        yield


def graphed_micro_loss(stack: contextlib.ExitStack, model: torch.nn.Module, eager: MicroLoss,
                       run_batches: list[list[EncodedRow]], params: list[torch.nn.Parameter], pad_token_id: int,
                       dtype: torch.dtype, device: torch.device, timings: dict[str, float],
                       log: Callable[[str], None]) -> tuple[MicroLoss, Any]:
    """cuda_graphs: every full micro-batch of the run padded to one shape and replayed as the captured forward
    and backward (a shorter last micro-batch runs eagerly). Returns the micro-step and the captured shape."""
    from tangpoem.fast.graphs import GraphedLoss, static_shape

    shape = static_shape(run_batches)  # of the whole run, so that a resumed run replays the same graphs
    sample = next(m for m in run_batches if len(m) == shape.rows)
    captured = time.perf_counter()
    graphed = GraphedLoss(model, shape, sample, pad_token_id, dtype, device)
    stack.callback(graphed.release)  # also when the loop fails or is interrupted
    torch.cuda.synchronize(device)
    timings["capture_seconds"] = time.perf_counter() - captured
    log(f"cuda graphs: captured micro-batches of {shape.rows} rows padded to {shape.length} tokens "
        f"in {timings['capture_seconds']:.1f} s")

    def micro_loss(rows: Sequence[EncodedRow], num_items: int, last: bool) -> torch.Tensor:
        if not graphed.fits(rows):
            return eager(rows, num_items, last)
        graphed.own_gradients(params)
        return graphed(rows) / num_items

    return micro_loss, shape


def step_reader(cfg: Config, device: torch.device, ranks: Distributed, steps_per_epoch: int) -> Any:
    """deferred_reads on a GPU: each step read once the next is queued; on a CPU deferring gains nothing."""
    from tangpoem.callbacks import StepReader
    from tangpoem.fast.reads import DeferredStepReader

    return (DeferredStepReader if cfg.deferred_reads and device.type == "cuda" else StepReader)(ranks, steps_per_epoch)
