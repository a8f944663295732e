"""What happens after each training step, outside the loop's arithmetic: reading the step's figures,
logging them, writing the loss history, watching for a run that diverged, evaluating on the validation rows,
early stopping, tracking, saving checkpoints. The loop calls these; each is one small class.

A `StepReader` turns a step's loss and gradient norm (tensors on the device) into a record; the callbacks
get each record once, in order, right after its step (`tangpoem.fast.reads` has a reader that defers).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from tangpoem.checkpoints import HISTORY_FILE, save_checkpoint, touch_lock
from tangpoem.console import interactive
from tangpoem.errors import RunError, setting
from tangpoem.evaluate import EVAL_HISTORY_FILE, describe_figures, evaluations_without_improvement
from tangpoem.io import atomic_write_json, display_path
from tangpoem.runtime import Distributed, rng_state

if TYPE_CHECKING:
    from tangpoem.train import Run

Record = dict[str, float]


class StepReader:
    """Each step's figures read on the host at once: the loss (the mean over ranks) and the gradient norm."""

    def __init__(self, ranks: Distributed, steps_per_epoch: int) -> None:
        self.ranks, self.steps_per_epoch = ranks, steps_per_epoch

    def figures(self, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """(loss, grad norm) as one float tensor; under DDP the loss is summed over the ranks' shares."""
        if self.ranks.world_size > 1:
            torch.distributed.all_reduce(step_loss)
        return torch.stack([step_loss.float() / self.ranks.world_size, grad_norm.to(step_loss.device, torch.float32)])

    def record(self, step: int, figures: torch.Tensor, learning_rate: float) -> Record:
        loss, grad_norm = figures.tolist()
        return {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "loss": loss,
                "learning_rate": learning_rate, "grad_norm": grad_norm}

    def push(self, step: int, step_loss: torch.Tensor, grad_norm: torch.Tensor, learning_rate: float,
             urgent: bool) -> list[Record]:
        return [self.record(step, self.figures(step_loss, grad_norm), learning_rate)]

    def flush(self) -> list[Record]:
        return []


class Callback:
    """A hook of the loop. `wants(step)`: must this step's record be read before the next step starts
    (the deferring reader reads other steps one step late)?"""

    def wants(self, run: Run, step: int) -> bool:
        return False

    def on_step_end(self, run: Run, record: Record) -> None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass


class Callbacks(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def wants(self, run: Run, step: int) -> bool:
        return any(c.wants(run, step) for c in self.callbacks)

    def on_step_end(self, run: Run, record: Record) -> None:
        for callback in self.callbacks:
            callback.on_step_end(run, record)

    def on_train_end(self, run: Run) -> None:
        for callback in self.callbacks:
            callback.on_train_end(run)


class StepFunction(Callback):
    """A plain function `f(step, record)` as a callback."""

    def __init__(self, function: Callable[[int, Record], None]) -> None:
        self.function = function

    def on_step_end(self, run: Run, record: Record) -> None:
        self.function(int(record["step"]), record)


class Progress(Callback):
    """One live bar when someone watches; otherwise a plain line every `logging_steps` steps. Either way the
    log steps' figures are printed, on the main rank only."""

    def __init__(self, run: Run) -> None:
        self.bar = None
        self.started = time.perf_counter()
        if run.ranks.is_main and interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start_step, desc="train", dynamic_ncols=True)

    def wants(self, run: Run, step: int) -> bool:
        return _logs(run, step)

    def on_step_end(self, run: Run, record: Record) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        if _logs(run, int(record["step"])) and run.ranks.is_main:
            line = (f"step {record['step']}/{run.total_steps}  loss {record['loss']:.4f}  "
                    f"lr {record['learning_rate']:.2e}  ({time.perf_counter() - self.started:.0f} s)")
            (self.bar.write if self.bar is not None else print)(line)

    def on_train_end(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.close()


def _logs(run: Run, step: int) -> bool:
    return step % run.cfg.logging_steps == 0 or step == run.total_steps


def _saves(run: Run, step: int) -> bool:
    return step % run.cfg.save_steps == 0 or step == run.total_steps


class History(Callback):
    """Every step's record into run.history; loss_history.json rewritten at each log step and at the end; the
    output_dir's lock touched at each step."""

    def on_step_end(self, run: Run, record: Record) -> None:
        run.history.append(record)
        run.timings.setdefault("first_step_seconds", time.perf_counter() - run.started)
        if run.ranks.is_main:
            touch_lock(run.output_dir)  # the output_dir's lock stays fresh while steps go on
            if _logs(run, int(record["step"])):
                atomic_write_json(run.output_dir / HISTORY_FILE, run.history)

    def on_train_end(self, run: Run) -> None:
        if run.ranks.is_main:
            atomic_write_json(run.output_dir / HISTORY_FILE, run.history)


class Guard(Callback):
    """Counts the steps whose loss is inf/nan and those whose update the fp16 loss scaler skipped (its scale
    falls when a gradient overflows); after `max_bad_steps` of them in a row the run stops with one line
    naming the cause and the fix. The last good checkpoint stays: the Saver never saves a non-finite step.
    (The scale is read when a record arrives: with deferred_reads in fp16, a skip is counted one step early.)"""

    def __init__(self, run: Run) -> None:
        self.scale = run.scaler.get_scale()  # 1.0 when loss scaling is off
        self.in_a_row = 0

    def on_step_end(self, run: Run, record: Record) -> None:
        scale = run.scaler.get_scale()
        skipped, self.scale = scale < self.scale, scale
        finite = math.isfinite(record["loss"])
        run.counts["non_finite_losses"] += not finite
        run.counts["skipped_steps"] += skipped
        self.in_a_row = self.in_a_row + 1 if skipped or not finite else 0
        if run.cfg.max_bad_steps and self.in_a_row >= run.cfg.max_bad_steps:
            if run.ranks.is_main:
                atomic_write_json(run.output_dir / HISTORY_FILE, run.history)
            raise RunError(diverged_message(run, int(record["step"]), self.in_a_row, finite))


def diverged_message(run: Run, step: int, bad: int, finite: bool) -> str:
    kept = run.kept_checkpoints()
    cause = ("the loss scaler skipped the update" if finite else "the loss was inf/nan")
    fp16 = run.scaler.is_enabled()
    fixes = [setting("kbit_fp32_upcast", True) + " (fp32 norms)"] if fp16 and not run.cfg.kbit_fp32_upcast else []
    fixes.append(setting("learning_rate", float(f"{run.cfg.learning_rate / 3:.1g}")))
    if fp16:
        fixes.append(setting("compute_dtype", "float32") + " (slower, no overflow)")
    return (f"training diverged: at step {step} {cause} for {bad} steps in a row ({'fp16 overflow' if fp16 else 'no loss scaling'}); "
            f"{', '.join(kept) or 'no checkpoint'} kept in {display_path(run.output_dir)}; try {' or '.join(fixes)}, then train again "
            f"(max_bad_steps={run.cfg.max_bad_steps})")


class Evaluate(Callback):
    """At each save step: the validation figures of the model as it is (tangpoem.evaluate), into
    run.eval_history and eval_history.json, and a log line; the Saver, called after this, puts them into
    the step's checkpoint. Under DDP the main rank evaluates and the others receive its figures."""

    def wants(self, run: Run, step: int) -> bool:
        return _saves(run, step)

    def on_step_end(self, run: Run, record: Record) -> None:
        step = int(record["step"])
        if not _saves(run, step) or not math.isfinite(record["loss"]):
            return
        evaluated = [run.evaluator(run.model, step, record["epoch"]) if run.ranks.is_main else None]
        if run.ranks.world_size > 1:
            torch.distributed.broadcast_object_list(evaluated, src=0)
        figures, run.eval_samples = evaluated[0]
        run.eval_history.append(figures)
        if run.ranks.is_main:
            atomic_write_json(run.output_dir / EVAL_HISTORY_FILE, run.eval_history)
            print(f"eval  step {step}/{run.total_steps}  {describe_figures(figures)}  ({figures['seconds']:.1f} s)")


class EarlyStopping(Callback):
    """transformers' EarlyStoppingCallback: stop once `early_stopping_patience` evaluations in a row have not
    improved `best_metric` by more than `early_stopping_threshold`. Its count is replayed from the eval
    history, so a resumed run counts on where it left off."""

    def on_step_end(self, run: Run, record: Record) -> None:
        cfg = run.cfg
        if not run.eval_history or run.eval_history[-1]["step"] != record["step"]:
            return
        waited = evaluations_without_improvement(run.eval_history, cfg.best_metric, cfg.early_stopping_threshold)
        if waited >= cfg.early_stopping_patience:
            run.should_stop = (f"early stopping at step {int(record['step'])}: {cfg.best_metric} has not improved by more "
                               f"than {cfg.early_stopping_threshold:g} in {waited} evaluations")
            if run.ranks.is_main:
                print(run.should_stop)


class Saver(Callback):
    """A checkpoint every `save_steps` steps and at the end: the adapter, what a resumed run needs, and the
    step's validation figures."""

    def wants(self, run: Run, step: int) -> bool:
        return _saves(run, step)

    def on_step_end(self, run: Run, record: Record) -> None:
        step = int(record["step"])
        if not _saves(run, step):
            return
        if run.ranks.is_main and math.isfinite(record["loss"]):  # a non-finite step is never the one kept
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)  # the step's optimizer update is no part of the save's time
            saving = time.perf_counter()
            evaluated = run.eval_history and run.eval_history[-1]["step"] == step
            evaluation = {**run.eval_history[-1], "samples": run.eval_samples} if evaluated else None
            save_checkpoint(run.model, training_state(run, step), run.output_dir, step, run.cfg.save_total_limit,
                            evaluation, run.cfg.best_metric)
            run.timings["checkpoint_seconds"] += time.perf_counter() - saving
        if run.ranks.world_size > 1:
            torch.distributed.barrier()


def training_state(run: Run, step: int) -> dict[str, Any]:
    """What a resumed run needs besides the adapter weights."""
    return {"step": step, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "history": run.history, "rng": rng_state(), "config": run.cfg.to_dict(),
            "data_sha256": run.dataset.fingerprint, "eval_history": run.eval_history, "world_size": run.ranks.world_size}


def default_callbacks(run: Run) -> list[Callback]:
    """In order: the history, the log, the divergence guard, then (each when configured) evaluation, early
    stopping and tracking, and last the checkpoint, which holds what the others recorded for its step."""
    from tangpoem.tracking import tracker

    callbacks: list[Callback] = [History(), Progress(run), Guard(run)]
    if run.evaluator is not None:
        callbacks.append(Evaluate())
        if run.cfg.early_stopping_patience:
            callbacks.append(EarlyStopping())
    if (tracking := tracker(run)) is not None:
        callbacks.append(tracking)
    return [*callbacks, Saver()]
