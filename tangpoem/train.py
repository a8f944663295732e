"""LoRA fine-tuning as one plain loop: setup, then for each optimizer step micro-batches, clip, step, log, save.

Runs on one device, or under `torchrun`/`accelerate launch` with DDP (each rank takes its share of
every global batch). Checkpoints are complete or absent: each is written to a temp directory and
renamed, so a run killed at any moment resumes from its last complete checkpoint and ends with the
same adapter weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tangpoem.attention import check_varlen_device, packed_kwargs, varlen_attention
from tangpoem.config import Config
from tangpoem.data import load_train_rows
from tangpoem.errors import InputError
from tangpoem.fused import fused_lora, fused_rms_norm
from tangpoem.graphs import GraphedLoss, StaticShape, static_shape
from tangpoem.io import atomic_write_json
from tangpoem.model import (
    add_lora,
    compile_decoder_layers,
    load_adapter,
    load_base_model,
    load_tokenizer,
    prepare_for_training,
    resolve_compute_dtype,
    resolve_device,
)
from tangpoem.tokens import (EncodedDataset, EncodedRow, answer_positions, collate, count_label_tokens, encode_training_rows,
                             pack)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "training_state.pt"
HISTORY_FILE = "loss_history.json"


# ----------------------------------------------------------------------------- checkpoints

def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first. Temp directories of an interrupted save are never listed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / ADAPTER_FILE).is_file() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def picked_index(count: int, index: int) -> int | None:
    """Which of `count` checkpoints `checkpoint_index` = `index` picks (Python indexing), or None if none."""
    return index % count if -count <= index < count else None


def pick_checkpoint(output_dir: str | os.PathLike, index: int = -1) -> Path:
    """The homework's pick-by-index over the checkpoint list (-1 = the last one)."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise InputError(f"{output_dir}: no checkpoints (run `tangpoem train` first)")
    picked = picked_index(len(checkpoints), index)
    if picked is None:
        raise InputError(f"config key 'checkpoint_index' = {index}: {output_dir} has {len(checkpoints)} checkpoints")
    return checkpoints[picked]


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))  # type: ignore[union-attr]


def save_checkpoint(model: torch.nn.Module, state: dict[str, Any], output_dir: Path, step: int, keep: int) -> Path:
    """Write adapter + training state to a temp dir, then rename it into place; prune old ones."""
    final = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", suffix=".tmp", dir=output_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- setup helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """DDP when launched by torchrun/accelerate (WORLD_SIZE > 1), as the homework's WORLD_SIZE branch meant."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), world_size, local_rank)


def batch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The rows of one epoch in shuffled order; a function of (seed, epoch) only, so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_rows, generator=generator).tolist()


def balance_micro_batches(order: Sequence[int], lengths: Sequence[int], size: int) -> list[int]:
    """`order` with rows swapped between its micro-batches (`size` consecutive rows each) until the
    longest holds as few tokens as swapping one pair of rows at a time can make it.

    Each swap takes the longest micro-batch and the one whose exchange of a row leaves the longer of the
    two shortest; both end shorter than it was, so the sum of squared token counts falls and the loop
    ends. Every row stays in the epoch once and every micro-batch (so every step) keeps its size; a
    trailing micro-batch shorter than `size` is not touched."""
    order = list(order)
    count = len(order) // size
    batches = [order[i * size : (i + 1) * size] for i in range(count)]
    tokens = [sum(lengths[r] for r in batch) for batch in batches]
    floor = -(-sum(tokens) // max(count, 1))  # no micro-batch can be shorter than this and all be equal

    def by_length(batch: list[int]) -> dict[int, int]:  # one position per distinct row length: fewer pairs to try
        return {lengths[r]: i for i, r in reversed(list(enumerate(batch)))}

    positions = [by_length(batch) for batch in batches]
    while count > 1:
        longest = max(range(count), key=tokens.__getitem__)  # the first of equals: deterministic
        if tokens[longest] <= floor:
            break
        best = None  # (the pair's longer count after the swap, other micro-batch, length out, length in)
        for other in sorted(range(count), key=tokens.__getitem__):  # shortest first
            if best is not None and tokens[longest] + tokens[other] >= 2 * best[0]:
                break  # no swap with this one or any longer one can leave the pair shorter than `best`
            room = tokens[longest] - tokens[other]
            for out_length in positions[longest]:
                for in_length in positions[other]:
                    if 0 < out_length - in_length < room:
                        after = max(tokens[longest] - out_length + in_length, tokens[other] + out_length - in_length)
                        if best is None or after < best[0]:
                            best = (after, other, out_length, in_length)
        if best is None:
            break
        _, other, out_length, in_length = best
        i, j = positions[longest][out_length], positions[other][in_length]
        batches[longest][i], batches[other][j] = batches[other][j], batches[longest][i]
        tokens[longest] -= out_length - in_length
        tokens[other] += out_length - in_length
        positions[longest], positions[other] = by_length(batches[longest]), by_length(batches[other])
    return [r for batch in batches for r in batch] + order[count * size :]


@functools.lru_cache(maxsize=32)
def epoch_order(lengths: tuple[int, ...], seed: int, epoch: int, balance_size: int | None) -> tuple[int, ...]:
    """The rows of one epoch in training order: shuffled, then (with `balance_size`) balanced in tokens
    over micro-batches of that many rows. Cached: every step of the epoch asks for it."""
    order = batch_order(len(lengths), seed, epoch)
    if balance_size is not None:
        order = balance_micro_batches(order, lengths, balance_size)
    return tuple(order)


def step_rows(dataset: EncodedDataset, cfg: Config, step: int) -> list[EncodedRow]:
    """The rows of optimizer step `step` (0-based): `batch_size` rows, the last batch of an epoch may be short.

    With `balanced_steps`, rows are swapped between the epoch's micro-batches (on one GPU, its micro-batches;
    under DDP, each rank's rows of a step are still every world_size-th) until each holds about the same
    number of tokens: a captured micro-batch is padded to the longest of the run, so an unbalanced one
    pays for its pad tokens in every layer."""
    steps_per_epoch = math.ceil(len(dataset.rows) / cfg.batch_size)
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_order(dataset.lengths, cfg.seed, epoch, cfg.micro_batch_size if cfg.balanced_steps else None)
    return [dataset.rows[i] for i in order[within * cfg.batch_size : (within + 1) * cfg.batch_size]]


def micro_batches(rows: Sequence[EncodedRow], cfg: Config, dist_info: Distributed) -> list[list[EncodedRow]]:
    """This rank's micro-batches of one optimizer step's rows."""
    local = list(rows)[dist_info.rank :: dist_info.world_size]
    return [local[i : i + cfg.micro_batch_size] for i in range(0, len(local), cfg.micro_batch_size)]


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int, answer_logits_only: bool) -> torch.Tensor:
    """Sum of token losses over the batch's answer tokens / `num_items` (the step's answer tokens).

    With `answer_logits_only` (one packed sequence), the lm_head runs only at the positions whose next
    token is learned, instead of at every prompt token too; the loss is the same."""
    if not answer_logits_only:
        return model(**batch, num_items_in_batch=num_items, use_cache=False).loss
    keep, targets = answer_positions(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]  # (kept, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum") / num_items


# ----------------------------------------------------------------------------- the recipe

@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: list[Path]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    model: torch.nn.Module | None = None  # the PeftModel as trained (adapters of the last step)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: set-up and capture, first step, checkpoint writes
    graph_shape: StaticShape | None = None  # with cuda_graphs: what every captured micro-batch is padded to


StepCallback = Callable[[int, dict[str, float]], None]


def train(cfg: Config, on_step_end: Sequence[StepCallback] = (), resume: bool = False) -> TrainResult:
    """Fine-tune LoRA adapters on the course data; returns where the checkpoints are.

    `on_step_end` callbacks get each step's number and record once, in order. On a GPU a step's record is
    read, and its callbacks run, once the next step is queued (so the device is not left idle), except on
    log and save steps; a callback that needs the weights of its own step runs with logging_steps = 1."""
    # 1. processes, seeds, device
    dist_info = setup_distributed()
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    if dist_info.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    dtype = resolve_compute_dtype(cfg, device)
    if cfg.varlen_attention and (why := check_varlen_device(device)):
        raise InputError(f"config key 'varlen_attention' = True: {why}; set it to false")
    if cfg.cuda_graphs and dist_info.world_size > 1:
        raise InputError("config key 'cuda_graphs' = True: one GPU only (DDP's gradient hooks are not captured); set it to false")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log = print if dist_info.is_main else (lambda *a, **k: None)

    # 2. data: tokenized once, with the label mask
    tokenizer = load_tokenizer(cfg)
    dataset = encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, cfg.num_train_data), cfg.cutoff_len, cfg.prompt_mode)
    log(f"data: {dataset.summary()}")

    # 3. model: base (+ NF4) with fresh LoRA, or the adapters of the checkpoint we resume from
    existing = list_checkpoints(output_dir)
    if existing and not resume:
        raise InputError(
            f"{output_dir}: holds checkpoints of an earlier run ({existing[-1].name}); "
            "resume it with --resume, or choose another output_dir"
        )
    latest = existing[-1] if existing else None
    if resume and latest is None:
        log(f"resume: no checkpoint in {output_dir}, starting from scratch")
    base = load_base_model(cfg, device)
    if latest is not None:
        model = load_adapter(prepare_for_training(base, cfg), str(latest), trainable=True)
    else:
        model = add_lora(base, cfg)
    if dist_info.is_main:
        model.print_trainable_parameters()
    if cfg.compile:
        log(f"compile: {compile_decoder_layers(model)} decoder layers (the first steps are slower)")
    params = [p for p in model.parameters() if p.requires_grad]

    # 4. optimizer and schedule (linear warmup then linear decay, as HF Trainer's default)
    from transformers import get_linear_schedule_with_warmup

    steps_per_epoch = math.ceil(len(dataset.rows) / cfg.batch_size)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    # fused: one kernel for all ~450 LoRA tensors instead of a few per tensor (same update rule)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None
    history: list[dict[str, float]] = []
    start_step = 0
    if latest is not None:
        state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = state["history"]
        start_step = state["step"]
        set_rng_state(state["rng"])
        log(f"resume: from {latest} (step {start_step} of {total_steps})")

    train_model: torch.nn.Module = model
    if dist_info.world_size > 1:
        device_ids = [dist_info.local_rank] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    autocast = (
        torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else contextlib.nullcontext()
    )

    # 5. the loop
    from tqdm.auto import tqdm

    model.train()
    timings = {"capture_seconds": 0.0, "checkpoint_seconds": 0.0}  # parts of the loop's time, for benchmarks
    started = time.perf_counter()
    progress = tqdm(total=total_steps, initial=start_step, desc="train", disable=not dist_info.is_main)
    # Modes for the loop only (generation afterwards needs sdpa's masks and peft's casts):
    with contextlib.ExitStack() as loop_modes:
        if cfg.varlen_attention:
            loop_modes.enter_context(varlen_attention(model))
        if not isinstance(autocast, contextlib.nullcontext):
            from peft.helpers import disable_input_dtype_casting

            # Under autocast the LoRA matmuls run in the compute dtype whatever their input's dtype, so peft's
            # cast of each LoRA input to the adapters' fp32 only adds copies: the matmuls see the same values
            # (dropout rounds once either way; only its random mask may be drawn in another order).
            loop_modes.enter_context(disable_input_dtype_casting(model))
        for key, mode, what in (("fused_rms_norm", fused_rms_norm, "RMSNorm layers of forward(hidden_states)"),
                                ("fused_lora", fused_lora, "peft LoRA Linear layers")):
            if getattr(cfg, key):
                if not (count := loop_modes.enter_context(mode(model))):
                    raise InputError(f"config key '{key}' = True: this model has no {what} to fuse; set it to false")
                log(f"fused: {count} {what}")
        graphed, shape = None, None
        if cfg.cuda_graphs and start_step < total_steps:
            # the shape of the whole run, so that a resumed run replays the same graphs
            run_batches = [m for step in range(total_steps) for m in micro_batches(step_rows(dataset, cfg, step), cfg, dist_info)]
            shape = static_shape(run_batches)
            sample = next(m for m in run_batches if len(m) == shape.rows)
            captured = time.perf_counter()
            graphed = GraphedLoss(model, shape, sample, tokenizer.pad_token_id, dtype, device)
            loop_modes.callback(graphed.release)  # also when the loop fails or is interrupted
            torch.cuda.synchronize(device)
            timings["capture_seconds"] = time.perf_counter() - captured
            log(f"cuda graphs: captured micro-batches of {shape.rows} rows padded to {shape.length} tokens "
                f"in {timings['capture_seconds']:.1f} s")
        timings["set_up_seconds"] = time.perf_counter() - started

        # A step's loss and gradient norm are copied to the host as the step ends and read once the next step
        # is queued, so the device runs that step while the CPU waits, logs and prepares the one after
        # (reading at once would leave the device idle meanwhile). Log and save steps are read at once.
        queued: list[tuple[int, torch.Tensor, float, torch.cuda.Event | None]] = []

        def read_step(done: int, figures: torch.Tensor, learning_rate: float, ready: torch.cuda.Event | None) -> None:
            if ready is not None:
                ready.synchronize()  # this step's copy only, not the work queued after it
            loss, grad_norm = figures.tolist()
            record = {"step": done, "epoch": round(done / steps_per_epoch, 4), "loss": loss,
                      "learning_rate": learning_rate, "grad_norm": grad_norm}
            history.append(record)
            timings.setdefault("first_step_seconds", time.perf_counter() - started)  # graphs captured and one step run
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            for callback in on_step_end:
                callback(done, record)

        for step in range(start_step, total_steps):
            rows = step_rows(dataset, cfg, step)
            # Sum of token losses / label tokens of the whole global batch: every token weighs the same,
            # whatever the micro-batch size, accumulation or number of ranks.
            num_items = count_label_tokens(rows)
            step_micro_batches = micro_batches(rows, cfg, dist_info)
            step_loss = torch.zeros((), device=device)
            if graphed is not None:
                graphed.own_gradients(params)
            for i, micro in enumerate(step_micro_batches):
                if graphed is not None and graphed.fits(micro):  # the captured forward and backward, replayed
                    loss = graphed(micro) / num_items
                else:
                    batch = pack(micro) if cfg.padding_free else collate(micro, tokenizer.pad_token_id)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    if cfg.varlen_attention:
                        batch.update(packed_kwargs([len(r.input_ids) for r in micro], device))
                    sync = i == len(step_micro_batches) - 1 or dist_info.world_size == 1
                    no_sync = train_model.no_sync() if not sync else contextlib.nullcontext()  # type: ignore[operator]
                    with no_sync, autocast:
                        loss = forward_loss(train_model, batch, num_items, cfg.answer_logits_only) * dist_info.world_size
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach() / dist_info.world_size
                del loss  # its autograd node would keep the captured graphs (and their memory) alive after the loop
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else torch.zeros(())
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=graphed is None)

            if dist_info.world_size > 1:
                torch.distributed.all_reduce(step_loss)
            done = step + 1
            figures = torch.stack([step_loss.float(), grad_norm.to(step_loss.device, torch.float32)])
            ready = None
            if device.type == "cuda":
                figures = figures.to("cpu", non_blocking=True)  # into pinned memory, valid once `ready` is reached
                ready = torch.cuda.Event()
                ready.record()
            queued.append((done, figures, scheduler.get_last_lr()[0], ready))
            logs, saves = done % cfg.logging_steps == 0 or done == total_steps, done % cfg.save_steps == 0 or done == total_steps
            while len(queued) > (0 if logs or saves or ready is None else 1):  # on the CPU deferring gains nothing
                read_step(*queued.pop(0))
            if logs:
                record = history[-1]
                log(f"step {done}/{total_steps}  loss {record['loss']:.4f}  lr {record['learning_rate']:.2e}")
                if dist_info.is_main:
                    atomic_write_json(output_dir / HISTORY_FILE, history)
            if saves:
                if dist_info.is_main:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)  # the step's optimizer update is no part of the save's time
                    saving = time.perf_counter()
                    state = {
                        "step": done,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler else None,
                        "history": history,
                        "rng": rng_state(),
                        "config": cfg.to_dict(),
                    }
                    save_checkpoint(model, state, output_dir, done, cfg.save_total_limit)
                    timings["checkpoint_seconds"] += time.perf_counter() - saving
                if dist_info.world_size > 1:
                    torch.distributed.barrier()
    progress.close()
    seconds = time.perf_counter() - started
    if dist_info.is_main:
        atomic_write_json(output_dir / HISTORY_FILE, history)
    log(f"train: {total_steps - start_step} steps in {seconds:.1f} s; checkpoints in {output_dir}")
    if dist_info.world_size > 1:
        torch.distributed.destroy_process_group()
    return TrainResult(output_dir, list_checkpoints(output_dir), history, seconds, model, timings, shape)
