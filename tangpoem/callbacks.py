"""What happens after each training step, outside the loop's arithmetic: reading the step's figures,
logging them, writing the loss history, saving checkpoints. The loop calls these; each is one small class.

A `StepReader` turns a step's loss and gradient norm (tensors on the device) into a record; the callbacks
get each record once, in order, right after its step (`tangpoem.fast.reads` has a reader that defers).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from tangpoem.checkpoints import HISTORY_FILE, save_checkpoint
from tangpoem.console import interactive
from tangpoem.io import atomic_write_json
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
    """Every step's record into run.history; loss_history.json rewritten at each log step and at the end."""

    def on_step_end(self, run: Run, record: Record) -> None:
        run.history.append(record)
        run.timings.setdefault("first_step_seconds", time.perf_counter() - run.started)
        if _logs(run, int(record["step"])) and run.ranks.is_main:
            atomic_write_json(run.output_dir / HISTORY_FILE, run.history)

    def on_train_end(self, run: Run) -> None:
        if run.ranks.is_main:
            atomic_write_json(run.output_dir / HISTORY_FILE, run.history)


class Saver(Callback):
    """A checkpoint every `save_steps` steps and at the end: the adapter and what a resumed run needs."""

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
            save_checkpoint(run.model, training_state(run, step), run.output_dir, step, run.cfg.save_total_limit)
            run.timings["checkpoint_seconds"] += time.perf_counter() - saving
        if run.ranks.world_size > 1:
            torch.distributed.barrier()


def training_state(run: Run, step: int) -> dict[str, Any]:
    """What a resumed run needs besides the adapter weights."""
    return {"step": step, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "history": run.history, "rng": rng_state(), "config": run.cfg.to_dict(),
            "data_sha256": run.dataset.fingerprint}


def default_callbacks(run: Run) -> list[Callback]:
    return [History(), Progress(run), Saver()]
