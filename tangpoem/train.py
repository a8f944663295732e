"""LoRA fine-tuning as the homework does it: `prepare` sets a run up, `train_loop` is the training loop,
`train` does both.

The loop is the Hugging Face course's (forward, backward, optimizer step) plus gradient accumulation,
clipping, logging and saving. What only makes it faster (tangpoem.fast) is chosen once in `prepare` and
reaches the loop as the micro-step's loss function, the step reader and the modes the loop runs in, never
as a branch in it. Checkpoints are whole or absent (tangpoem.checkpoints): a run killed at any moment
resumes from its last checkpoint and ends with the weights of an uninterrupted run. Under `torchrun` each
rank takes its share of every global batch (DDP).

With `val_size`, each save is evaluated on held-out course rows first (tangpoem.evaluate, a callback); a run
that diverges (inf/nan losses, skipped fp16 updates) stops with one line; a step that runs out of CUDA
memory is done again in micro-batches half as big, the same rows per optimizer step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tangpoem.callbacks import Callback, Callbacks, StepFunction, default_callbacks
from tangpoem.checkpoints import clean_stale_temps, list_checkpoints, load_training_state, output_dir_lock
from tangpoem.config import Config, describe, effective_yaml
from tangpoem.data import load_train_rows
from tangpoem.errors import InputError, RunError, say, setting
from tangpoem.evaluate import EVAL_HISTORY_FILE, Evaluator
from tangpoem.io import atomic_write_json, atomic_write_text
from tangpoem.model import add_lora, load_adapter, load_base_model, load_tokenizer, prepare_for_training
from tangpoem.runtime import (Distributed, resolve_compute_dtype, resolve_device, seed_everything, set_rng_state, setup_distributed,
                              uses_loss_scaling)
from tangpoem.tracking import check_trackers
from tangpoem.tokens import (EncodedDataset, EncodedRow, answer_positions, collate, count_label_tokens, encode_training_rows, pack,
                             packed_kwargs)


SUMMARY_FILE = "train_summary.json"  # steps, seconds and where they went (loading, capture, first step, checkpoint writes)


# ----------------------------------------------------------------------------- rows, batches, loss

def shuffled_order(num_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The rows of one epoch in shuffled order; a function of (seed, epoch) only, so a resumed run sees the same order."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return tuple(torch.randperm(num_rows, generator=generator).tolist())


def epoch_order(cfg: Config, lengths: Sequence[int], world_size: int = 1) -> Callable[[int], Sequence[int]]:
    """epoch -> its rows in training order: shuffled; with `balanced_steps`, then evened out in tokens over
    groups of a micro-batch's rows counted from the epoch's start (tangpoem.fast.balance). Those groups are the
    micro-batches the ranks run when each rank's share of a step is whole micro-batches (batch_size a multiple of
    processes × micro_batch_size, as in the shipped configs); otherwise they straddle shares and even out less.
    Each epoch's order is computed once."""
    order = functools.partial(shuffled_order, len(lengths), cfg.seed)
    if cfg.balanced_steps:
        from tangpoem.fast.balance import balance_micro_batches

        shuffled, size = order, min(cfg.micro_batch_size, -(-cfg.batch_size // world_size))  # a full step's largest share
        order = lambda epoch: balance_micro_batches(shuffled(epoch), lengths, size)  # noqa: E731
    return functools.lru_cache(maxsize=None)(order)  # a few epochs at most; the set-up and the loop both ask


def rank_rows(count: int, world_size: int, rank: int) -> slice:
    """Rank `rank`'s consecutive share of a step's `count` rows, as even as can be (the first count % world_size
    ranks take one more)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def steps_per_epoch(dataset: EncodedDataset, cfg: Config) -> int:
    return math.ceil(len(dataset.rows) / cfg.batch_size)  # an epoch's last step may have fewer rows


def rows_of_step(dataset: EncodedDataset, cfg: Config, order: Callable[[int], Sequence[int]], step: int) -> list[EncodedRow]:
    """The rows of optimizer step `step` (0-based): `batch_size` of them; an epoch's last step may have fewer."""
    epoch, within = divmod(step, steps_per_epoch(dataset, cfg))
    return [dataset.rows[i] for i in order(epoch)[within * cfg.batch_size : (within + 1) * cfg.batch_size]]


def padded_batch(rows: Sequence[EncodedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The homework's layout: rows padded on the right to the longest, with an attention mask."""
    return collate(rows, pad_token_id)


def packed_batch(rows: Sequence[EncodedRow], pad_token_id: int) -> dict[str, Any]:
    """padding_free: the rows end to end, no pad tokens; with the rows' bounds, which varlen attention reads
    (sdpa builds its block mask from the restarting positions and ignores them)."""
    return {**pack(rows), **packed_kwargs([len(r.input_ids) for r in rows], "cpu")}


def full_logits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int) -> torch.Tensor:
    """Sum of the token losses of the batch's answer tokens / `num_items` (the answer tokens of the whole step)."""
    return model(**batch, num_items_in_batch=num_items, use_cache=False).loss


def answer_logits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int) -> torch.Tensor:
    """The same loss, with the lm_head run only where the next token is learned (one packed sequence)."""
    keep, targets = answer_positions(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]  # (kept, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum") / num_items


# ----------------------------------------------------------------------------- set-up

@dataclass
class Run:
    """Everything the loop needs, made once by `prepare`."""

    cfg: Config
    model: torch.nn.Module  # the peft model being trained
    tokenizer: Any
    dataset: EncodedDataset
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler  # enabled for fp16 only: the loss is scaled so that small gradients don't underflow
    device: torch.device
    ranks: Distributed
    output_dir: Path
    start_step: int
    total_steps: int
    history: list[dict[str, float]]
    micro_loss: Callable[[Sequence[EncodedRow], int, bool], torch.Tensor]  # (rows, answer tokens of the step, last)
    sync_gradients: Callable[[], None]  # the ranks' gradients made one before the step (or nothing to do)
    order: Callable[[int], Sequence[int]]  # epoch -> its rows in training order
    reader: Any  # callbacks.StepReader: a step's loss and grad norm as a record
    modes: contextlib.ExitStack  # held while the loop runs: the output_dir's lock and the levers' modes
    params: list[torch.nn.Parameter] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=lambda: {"capture_seconds": 0.0, "checkpoint_seconds": 0.0})
    graph_shape: Any = None  # with cuda_graphs: what every captured micro-batch is padded to
    evaluator: Evaluator | None = None  # with val_size: measures each save on the validation rows
    eval_history: list[dict[str, Any]] = field(default_factory=list)  # every evaluation's figures
    eval_samples: list[dict[str, str]] = field(default_factory=list)  # the last evaluation's sample poems
    should_stop: str | None = None  # set by a callback (early stopping): why the loop ends here
    counts: dict[str, int] = field(default_factory=lambda: {"non_finite_losses": 0, "skipped_steps": 0, "oom_retries": 0})
    micro_batch_size: int = 0  # rows per forward pass: micro_batch_size, halved after a CUDA out-of-memory

    def __post_init__(self) -> None:
        self.micro_batch_size = self.micro_batch_size or self.cfg.micro_batch_size

    def kept_checkpoints(self) -> list[str]:
        """The checkpoints on disk: what a stopping run names as kept."""
        return [p.name for p in list_checkpoints(self.output_dir)]

    def step_rows(self, step: int) -> list[EncodedRow]:
        return rows_of_step(self.dataset, self.cfg, self.order, step)

    def micro_batches(self, rows: Sequence[EncodedRow]) -> list[list[EncodedRow]]:
        """This rank's micro-batches of one step's rows: its consecutive share of them (which balanced_steps
        balances as micro-batches of their own)."""
        local = list(rows)[rank_rows(len(rows), self.ranks.world_size, self.ranks.rank)]
        size = self.micro_batch_size
        return [local[i : i + size] for i in range(0, len(local), size)]

    def halve_micro_batches(self, step: int, error: torch.OutOfMemoryError) -> None:
        """After a CUDA out-of-memory in `step`: its partial gradients dropped and its micro-batches halved, so
        that the loop does it again with the same rows (the same loss and update without dropout; with it, other
        dropout masks, as the micro-batches' shapes change); said once per halving. At one
        row (or under DDP, whose ranks must agree) the run stops with one line naming the memory and the knobs."""
        self.optimizer.zero_grad(set_to_none=False)
        size = self.micro_batch_size
        if size == 1 or self.ranks.world_size > 1:
            raise RunError(out_of_memory_message(self, step, error)) from None
        self.micro_batch_size = size // 2
        self.counts["oom_retries"] += 1
        if self.ranks.is_main:
            print(f"out of memory at step {step + 1} with micro-batches of {size} rows: from now on {self.micro_batch_size} "
                  f"(the same {self.cfg.batch_size} rows per optimizer step); "
                  f"{setting('micro_batch_size', self.micro_batch_size)} avoids the retry")


def out_of_memory_message(run: Run, step: int, error: BaseException) -> str:
    seen = "no CUDA memory figures"
    if run.device.type == "cuda":
        total = torch.cuda.get_device_properties(run.device).total_memory
        seen = f"{torch.cuda.max_memory_allocated(run.device) / 2**30:.1f} GiB of {total / 2**30:.1f} GiB at the peak"
    size = "one row a micro-batch" if run.micro_batch_size == 1 else f"micro-batches of {run.micro_batch_size} rows (DDP: no retry)"
    kept = run.kept_checkpoints()
    fixes = [setting("gradient_checkpointing", True)] if not run.cfg.gradient_checkpointing else []
    layers = getattr(getattr(run.model, "config", None), "num_hidden_layers", None)
    if run.cfg.gradient_checkpointing and run.cfg.checkpointed_layers is not None and layers:
        fixes.append(setting("checkpointed_layers", layers))  # every layer recomputes
    fixes.append(setting("cutoff_len", max(32, run.cfg.cutoff_len // 2)))
    if run.micro_batch_size > 1:
        fixes.append(setting("micro_batch_size", run.micro_batch_size // 2))
    return (f"out of CUDA memory at step {step + 1} with {size} ({seen}); {', '.join(kept) or 'no checkpoint'} kept; "
            f"try {' or '.join(fixes)}, or a GPU with more memory")


def open_output_dir(cfg: Config, ranks: Distributed, held: contextlib.ExitStack, log: Callable[[str], None]) -> Path:
    """The run's output_dir, created; on the main rank locked for this run (held until the run ends), its
    killed saves' temp folders removed, and the effective config written into it."""
    output_dir = Path(cfg.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"config key 'output_dir' = {cfg.output_dir!r}: a file is in the way; choose a folder") from None
    log(describe(cfg))
    if ranks.is_main:
        held.enter_context(output_dir_lock(output_dir))
        if stale := clean_stale_temps(output_dir):
            log(f"removed {len(stale)} unfinished checkpoint folder(s) of a run that was killed while saving")
        atomic_write_text(output_dir / "config.yaml", effective_yaml(cfg))
    return output_dir


def resume_point(output_dir: Path, resume: bool | str, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to continue from: the latest with `resume` (with "auto", if there is one); none for a
    fresh run, which refuses an output_dir holding another run's checkpoints."""
    existing = list_checkpoints(output_dir)
    if resume == "auto":
        resume = bool(existing)
    if existing and not resume:
        raise InputError(f"{output_dir}: holds checkpoints of an earlier run ({existing[-1].name}); continue it with "
                         f"{say('--resume', '`resume = True`')}, or choose another output_dir")
    if resume and not existing:
        log(f"resume: no checkpoint in {output_dir}, starting from scratch")
    return existing[-1] if existing else None


# What a resumed run must share with the checkpoint's, or it would learn something else than it started to.
WHAT_IS_LEARNED = ("model_name_or_path", "load_in_4bit", "compute_dtype", "prompt_mode", "lora_r", "lora_alpha",
                   "lora_dropout", "lora_target_modules", "seed", "num_epochs", "max_steps", "learning_rate",
                   "weight_decay", "max_grad_norm", "batch_size", "warmup_steps", "balanced_steps")
# balanced_steps orders each epoch's rows by micro-batch, so there the micro-batch size is part of what is learned too
WHAT_BALANCING_LEARNS = ("micro_batch_size",)


def check_resumable(state: dict[str, Any], checkpoint: Path, cfg: Config, dataset: EncodedDataset, ranks: Distributed,
                    force: bool) -> None:
    """Refuse, one line per key, a resume whose config or training rows differ from the checkpoint's in
    anything that changes what is learned; `force` resumes anyway."""
    saved = state.get("config", {})
    changes = [f"  {key}: {saved[key]!r} in {checkpoint.name}, {getattr(cfg, key)!r} now"
               for key in WHAT_IS_LEARNED + (WHAT_BALANCING_LEARNS if cfg.balanced_steps else ())
               if key in saved and saved[key] != getattr(cfg, key)]
    # balancing evens out each rank's share (checkpoints from before 2026-11-29 hold no world_size: read as 1)
    if cfg.balanced_steps and state.get("world_size", 1) != ranks.world_size:
        changes.append(f"  processes (torchrun's ranks): {state.get('world_size', 1)} in {checkpoint.name}, {ranks.world_size} now")
    if state.get("data_sha256", dataset.fingerprint) != dataset.fingerprint:
        changes.append(f"  the training rows (data_dir, num_train_data, cutoff_len or the tokenizer) differ from {checkpoint.name}'s")
    if changes and not force:
        raise InputError("\n".join([f"{checkpoint.parent}: resuming {checkpoint.name} would change what is learned:", *changes,
                                    "set them back, choose another output_dir, or resume anyway with "
                                    + say("--force", "`train(cfg, resume=True, force=True)`")]))


def optimizer_and_schedule(cfg: Config, params: list[torch.nn.Parameter], device: torch.device, dtype: torch.dtype,
                           total_steps: int) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """AdamW, linear warmup then linear decay (HF Trainer's defaults, as the homework), and the fp16 loss scaler."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")  # one kernel for all LoRA tensors, same update rule
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=uses_loss_scaling(device, dtype))
    return optimizer, scheduler, scaler


def eager_micro_loss(cfg: Config, model: torch.nn.Module, tokenizer: Any, device: torch.device, dtype: torch.dtype,
                     ranks: Distributed, wrap_in_ddp: bool) -> Callable[[Sequence[EncodedRow], int, bool], torch.Tensor]:
    """The micro-step's loss: batch layout, loss, mixed precision and DDP (`wrap_in_ddp`: torch's DDP wrapper;
    without it under several ranks, fast.levers.gradient_sync averages the gradients), each chosen here once."""
    train_model = model
    if wrap_in_ddp:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ranks.local_rank] if device.type == "cuda" else None)
    autocast = device.type == "cuda" and dtype != torch.float32
    make_batch = packed_batch if cfg.padding_free else padded_batch
    compute_loss = answer_logits_loss if cfg.answer_logits_only else full_logits_loss
    accumulate = train_model.no_sync if wrap_in_ddp else contextlib.nullcontext  # gradients sync on the last micro-batch

    def micro_loss(rows: Sequence[EncodedRow], num_items: int, last: bool) -> torch.Tensor:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in make_batch(rows, tokenizer.pad_token_id).items()}
        with contextlib.nullcontext() if last else accumulate(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            # DDP averages gradients over ranks; each rank's loss is its share of the global sum
            return compute_loss(train_model, batch, num_items) * ranks.world_size

    return micro_loss


def prepare(cfg: Config, resume: bool | str = False, force: bool = False) -> Run:
    """Set a run up: process and seeds, output_dir, data, model with LoRA, optimizer and schedule, the state
    to resume from, and the levers. The returned run's `modes` are entered (the output_dir's lock, the levers'
    modes): `train` leaves them."""
    from tangpoem.fast import levers

    loading = time.perf_counter()
    ranks = setup_distributed()
    seed_everything(cfg.seed)
    device = resolve_device(cfg, ranks)
    dtype = resolve_compute_dtype(cfg, device)
    levers.check_training_levers(cfg, device)
    check_trackers(cfg)
    log = print if ranks.is_main else (lambda *a, **k: None)
    held = contextlib.ExitStack()
    try:
        output_dir = open_output_dir(cfg, ranks, held, log)
        # data: tokenized once, with the label mask
        tokenizer = load_tokenizer(cfg)
        dataset = encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, cfg.num_train_data), cfg.cutoff_len, cfg.prompt_mode)
        log(f"data: {dataset.summary()}")
        reaches_an_epochs_end = cfg.max_steps is None or cfg.max_steps >= steps_per_epoch(dataset, cfg)
        if ranks.world_size > 1 and reaches_an_epochs_end and 0 < (last := len(dataset.rows) % cfg.batch_size) < ranks.world_size:
            raise InputError(f"config key 'num_train_data' = {cfg.num_train_data}: each epoch's last step has {last} row(s) for "
                             f"{ranks.world_size} processes, and a process without rows would stall the others; choose "
                             f"num_train_data or batch_size so that it has none or at least {ranks.world_size}")
        latest = resume_point(output_dir, resume, log)
        state = load_training_state(latest) if latest else None
        if state is not None:
            check_resumable(state, latest, cfg, dataset, ranks, force)

        # model: the base (NF4 on a GPU) with fresh LoRA adapters, or the adapters of the checkpoint resumed
        base = levers.prepare_base(load_base_model(cfg, device), cfg, dtype)
        model = load_adapter(prepare_for_training(base, cfg), str(latest), trainable=True) if latest else add_lora(base, cfg)
        if ranks.is_main:
            model.print_trainable_parameters()
        params = [p for p in model.parameters() if p.requires_grad]

        epoch_steps = steps_per_epoch(dataset, cfg)
        total_steps = cfg.max_steps or epoch_steps * cfg.num_epochs
        optimizer, scheduler, scaler = optimizer_and_schedule(cfg, params, device, dtype, total_steps)
        history, start_step, eval_history = [], 0, []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:  # a checkpoint written without loss scaling (bf16, fp32) leaves the new scaler fresh
                scaler.load_state_dict(state["scaler"])
            history, start_step, eval_history = state["history"], state["step"], state.get("eval_history", [])
            set_rng_state(state["rng"])
            log(f"resume: from {latest} (step {start_step} of {total_steps})")

        micro_loss = eager_micro_loss(cfg, model, tokenizer, device, dtype, ranks, levers.ddp_hooks(cfg, ranks))
        run = Run(cfg, model, tokenizer, dataset, optimizer, scheduler, scaler, device, ranks, output_dir, start_step,
                  total_steps, history, micro_loss, levers.gradient_sync(cfg, params, ranks), epoch_order(cfg, dataset.lengths, ranks.world_size),
                  levers.step_reader(cfg, device, ranks, epoch_steps), held, params, eval_history=eval_history)
        if cfg.val_size:
            run.evaluator = Evaluator(cfg, tokenizer, device, dtype, functools.partial(levers.evaluation_modes, model, cfg))
            log(run.evaluator.summary())
            if ranks.is_main:  # a resumed run's history ends at its checkpoint, whatever the killed run wrote after
                atomic_write_json(output_dir / EVAL_HISTORY_FILE, eval_history)
        run.timings["load_seconds"] = run.started - loading  # process set-up, data, model and adapters
        levers.enter_training_modes(run.modes, model, cfg, device.type == "cuda" and dtype != torch.float32, log)
        if cfg.cuda_graphs and start_step < total_steps:
            run_batches = [m for step in range(total_steps) for m in run.micro_batches(run.step_rows(step))]
            run.micro_loss, run.graph_shape = levers.graphed_micro_loss(
                run.modes, model, micro_loss, run_batches, params, tokenizer.pad_token_id, dtype, device, ranks, run.timings, log)
    except BaseException:
        held.close()
        raise
    run.timings["set_up_seconds"] = time.perf_counter() - run.started
    return run


# ----------------------------------------------------------------------------- the loop

def train_loop(run: Run, callbacks: Callback) -> None:
    """For each optimizer step: its micro-batches forward and backward, then clip, step, and hand the
    step's figures to the callbacks (logging, history, evaluation, checkpoints)."""
    model, optimizer, scheduler, scaler, cfg = run.model, run.optimizer, run.scheduler, run.scaler, run.cfg
    model.train()
    for step in range(run.start_step, run.total_steps):
        rows = run.step_rows(step)
        # every answer token of the step weighs the same, whatever the micro-batch size, accumulation or ranks
        num_items = count_label_tokens(rows)
        step_loss = None
        while step_loss is None:  # done again in smaller micro-batches after a CUDA out-of-memory
            try:
                step_loss = torch.zeros((), device=run.device)
                micro_batches = run.micro_batches(rows)
                for i, micro_batch in enumerate(micro_batches):
                    loss = run.micro_loss(micro_batch, num_items, i == len(micro_batches) - 1)
                    scaler.scale(loss).backward()
                    step_loss += loss.detach()
                    del loss  # a captured step's graph would otherwise outlive the loop
            except torch.OutOfMemoryError as error:
                step_loss = loss = None  # the failed pass's graph goes
                run.halve_micro_batches(step, error)  # or stop with one line
        run.sync_gradients()  # DDP under CUDA graphs: the ranks' mean gradient (DDP's hooks do it otherwise)
        scaler.unscale_(optimizer)  # fp16: the true gradients, before clipping them
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm or math.inf)
        scaler.step(optimizer)  # fp16: skipped when a gradient is inf/nan
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=False)  # keep the (small) LoRA gradient tensors: a captured backward adds into them
        done = step + 1
        for record in run.reader.push(done, step_loss, grad_norm, scheduler.get_last_lr()[0], callbacks.wants(run, done)):
            callbacks.on_step_end(run, record)
        if run.should_stop:  # early stopping
            break
    for record in run.reader.flush():
        callbacks.on_step_end(run, record)
    callbacks.on_train_end(run)


@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: list[Path]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    model: torch.nn.Module | None = None  # the peft model as trained (adapters of the last step)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: set-up and capture, first step, checkpoint writes
    graph_shape: Any = None  # with cuda_graphs: what every captured micro-batch is padded to
    eval_history: list[dict[str, Any]] = field(default_factory=list)  # with val_size: the figures of each save
    stopped_early: str | None = None  # why early stopping ended the run, if it did
    counts: dict[str, int] = field(default_factory=dict)  # non-finite losses, skipped fp16 steps, out-of-memory retries


def train(cfg: Config, on_step_end: Sequence[Callable[[int, dict[str, float]], None] | Callback] = (),
          resume: bool | str = False, force: bool = False) -> TrainResult:
    """Fine-tune LoRA adapters on the course data; returns where the checkpoints are.

    `resume`: continue from the latest checkpoint in output_dir; "auto": if there is one (a notebook re-run
    after a disconnect); a resume that would change what is learned is refused unless `force`. `on_step_end` callbacks (functions `f(step, record)` or `Callback`s) get each step's record once, in
    order, after the history has it and before its checkpoint is written. With `deferred_reads` a step's
    callbacks run once the next step is queued, except on log and save steps."""
    run = prepare(cfg, resume, force)
    extra = [c if isinstance(c, Callback) else StepFunction(c) for c in on_step_end]
    with run.modes:
        callbacks = default_callbacks(run)
        callbacks[1:1] = extra  # after History, before Progress and Saver
        train_loop(run, Callbacks(callbacks))
    if run.ranks.world_size > 1:
        torch.distributed.destroy_process_group()
    seconds = time.perf_counter() - run.started
    if run.ranks.is_main:
        steps = (run.history[-1]["step"] if run.history else run.start_step) - run.start_step  # fewer if stopped early
        atomic_write_json(run.output_dir / SUMMARY_FILE, {"steps": steps, "seconds": seconds, "timings": run.timings,
                                                         "last_loss": run.history[-1]["loss"] if run.history else None,
                                                         "counts": run.counts, "stopped_early": run.should_stop})
        print(f"train: {steps} steps in {seconds:.1f} s (loading {run.timings['load_seconds']:.1f} s before); "
              f"checkpoints in {run.output_dir}")
        if any(run.counts.values()):
            print("guards: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in run.counts.items() if n))
    return TrainResult(run.output_dir, list_checkpoints(run.output_dir), run.history, seconds, run.model, run.timings,
                       run.graph_shape, run.eval_history, run.should_stop, run.counts)
