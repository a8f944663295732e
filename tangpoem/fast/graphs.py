"""Training micro-batches replayed as one CUDA graph: captured once, then no per-kernel CPU cost.

A LoRA step of a 7B model is thousands of small kernels. Launched one by one from Python each costs more
CPU time than the GPU needs to run it, so an eager step waits on the CPU (on an H200, ~280 ms for
~140 ms of GPU work). A CUDA graph replays the recorded forward and backward with one launch each.
Graphs need fixed shapes: every packed micro-batch is padded to one length by a pad row (its labels
all ignored; with varlen attention it attends only to itself), and its answer positions to one count
(the extra ones point into the pad row, whose targets are ignored). The loss is the same sum, up to
floating-point rounding (the padded matmuls have other shapes).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from tangpoem.tokens import IGNORE_INDEX, EncodedRow, answer_positions, count_label_tokens, pack, packed_kwargs


@dataclass(frozen=True)
class StaticShape:
    rows: int  # rows of a full micro-batch; other micro-batches (a short last one) run eagerly
    length: int  # tokens of every padded micro-batch, pad row included
    answers: int  # answer positions (kept logits) of every padded micro-batch


def static_shape(micro_batches: Iterable[Sequence[EncodedRow]], multiple: int = 64) -> StaticShape:
    """One shape that holds every full micro-batch of the run, with a pad row of at least 2 tokens
    (its last-but-one position is where padded answer positions point)."""
    micro_batches = list(micro_batches)
    rows = max(len(m) for m in micro_batches)
    full = [m for m in micro_batches if len(m) == rows]
    longest = max(sum(len(r.input_ids) for r in m) for m in full) + 2
    answers = max(count_label_tokens(m) for m in full)
    return StaticShape(rows, -(-longest // multiple) * multiple, answers)


def static_batch(rows: Sequence[EncodedRow], shape: StaticShape, pad_token_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, position_ids, row bounds, kept positions, their targets) of `rows` padded to `shape`."""
    used = sum(len(r.input_ids) for r in rows)
    pad = shape.length - used
    if len(rows) != shape.rows or pad < 2:
        raise ValueError(f"{len(rows)} rows of {used} tokens do not fit {shape}")
    batch = pack([*rows, EncodedRow([pad_token_id] * pad, [IGNORE_INDEX] * pad, False)])
    keep, targets = answer_positions(batch["labels"])
    extra = shape.answers - len(keep)  # padded answer positions: the pad row's last-but-one, its target ignored
    keep = torch.cat([keep, torch.full((extra,), shape.length - 2)])
    targets = torch.cat([targets, torch.full((extra,), IGNORE_INDEX)])
    bounds = packed_kwargs([*(len(r.input_ids) for r in rows), pad], "cpu")["cu_seq_lens_q"]
    return batch["input_ids"], batch["position_ids"], bounds, keep, targets


class PackedLoss(torch.nn.Module):
    """Sum of the token losses of one padded micro-batch (the callable that is captured). The model
    must attend with `attention.varlen_attention`."""

    def __init__(self, model: torch.nn.Module, length: int) -> None:
        super().__init__()
        self.model = model
        self.length = length  # an upper bound of every row's length, as the kernel's max_length

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, bounds: torch.Tensor,
                keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, position_ids=position_ids, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                            max_length_q=self.length, max_length_k=self.length, logits_to_keep=keep,
                            use_cache=False).logits[0]
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")  # ignores IGNORE_INDEX


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream torch.cuda.graph captures on when given none (make_graphed_callables gives none): one per
    process, made at the first capture unless made here first."""
    if torch.cuda.graph.default_capture_stream is None:
        with torch.cuda.device(device):
            torch.cuda.graph.default_capture_stream = torch.cuda.Stream()
    return torch.cuda.graph.default_capture_stream


def warm_up_cublas(device: torch.device) -> None:
    """Create cuBLAS's and cuBLASLt's handles and workspaces with the products a training step uses (matmul,
    addmm, their backward), on the stream the captures use, under the caller's autocast. A workspace is kept
    per handle and stream for the process's life: made during a capture, it would sit in that graph's memory
    pool and keep part of the pool after the graph is freed."""
    with torch.cuda.stream(capture_stream(device)), torch.enable_grad():  # also called under no_grad (generation)
        a = torch.randn(64, 64, device=device, requires_grad=True)
        b = torch.randn(64, 64, device=device, requires_grad=True)
        out = torch.addmm(a @ b, a, b) + torch.nn.functional.linear(a, b, a[0])
        torch.autograd.grad(out.float().sum(), [a, b])
    torch.cuda.synchronize(device)


class GraphedLoss:
    """PackedLoss captured as CUDA graphs (forward and backward) on a sample micro-batch; calling it
    with rows of the same shape replays them. Gradients reach the parameters as in eager mode."""

    def __init__(self, model: torch.nn.Module, shape: StaticShape, sample_rows: Sequence[EncodedRow],
                 pad_token_id: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.pad_token_id, self.device = shape, pad_token_id, device
        rng = torch.cuda.get_rng_state(device)  # the warm-up's random inputs and the capture must not move the dropout masks
        # The captured module and its graphed forward refer to each other, so only the garbage collector frees
        # the graphs and their memory pool. A full collection scans every object of the process (a few hundred
        # ms with torch and transformers loaded); frozen, the objects made before the capture are left out.
        gc.freeze()
        try:
            # autocast's weight-cast cache cannot live across graph replays, hence cache_enabled=False.
            with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
                # torch warms up with eager runs of the whole forward and backward (3 by default: costly for a
                # 7B model), for the lazy set-up a capture must not contain. Here that set-up is cuBLAS's
                # handles (without it the capture fails in cublasCreate), made by a few small products instead.
                # (An eager training step does not do: its capture fails on AccumulateGrad's stream.)
                warm_up_cublas(device)
                self.graphed: Any = torch.cuda.make_graphed_callables(PackedLoss(model, shape.length),
                                                                      self.inputs(sample_rows), num_warmup_iters=0)
        except BaseException:
            gc.unfreeze()
            raise
        torch.cuda.set_rng_state(rng, device)

    def fits(self, rows: Sequence[EncodedRow]) -> bool:
        return len(rows) == self.shape.rows

    def inputs(self, rows: Sequence[EncodedRow]) -> tuple[torch.Tensor, ...]:
        """`rows` padded, on the device. The copies start from pinned memory, so the CPU queues them and
        goes on (one from pageable memory can hold it until the device is idle): the loop prepares the next
        step while the device still runs this one."""
        return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in static_batch(rows, self.shape, self.pad_token_id))

    def __call__(self, rows: Sequence[EncodedRow]) -> torch.Tensor:
        return self.graphed(*self.inputs(rows))

    @staticmethod
    def own_gradients(params: Iterable[torch.nn.Parameter]) -> None:
        """Give every parameter a gradient tensor of its own before a step's replays. The graph's
        backward returns its static output buffers; accumulated into a missing .grad, one would become
        that .grad, and the next replay would overwrite it. (The loop then zeroes grads, never unsets them.)"""
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)

    def release(self) -> None:
        """Free the graphs and their memory pool; the objects frozen at the capture are collected as before."""
        if self.graphed is None:
            return
        self.graphed = None
        try:
            gc.collect()  # only what was made since the capture
        finally:
            gc.unfreeze()
