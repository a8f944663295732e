"""Deferred reads: a step's figures read on the host once the next step is queued.

Reading a loss on the host waits for the device to finish the step; meanwhile the CPU cannot queue the
next one, so the device idles between steps. Copying the figures into pinned memory as the step ends and
reading them one step later keeps the device busy. Steps a callback wants at once (log and save steps)
are still read at once, so a checkpoint holds its own step's history.
"""

from __future__ import annotations

import torch

from tangpoem.callbacks import Record, StepReader


class DeferredStepReader(StepReader):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queued: list[tuple[int, torch.Tensor, float, torch.cuda.Event]] = []

    def push(self, step: int, step_loss: torch.Tensor, grad_norm: torch.Tensor, learning_rate: float,
             urgent: bool) -> list[Record]:
        figures = self.figures(step_loss, grad_norm).to("cpu", non_blocking=True)  # valid once `ready` is reached
        ready = torch.cuda.Event()
        ready.record()
        self.queued.append((step, figures, learning_rate, ready))
        return self._read(keep=0 if urgent else 1)

    def flush(self) -> list[Record]:
        return self._read(keep=0)

    def _read(self, keep: int) -> list[Record]:
        out = []
        while len(self.queued) > keep:
            step, figures, learning_rate, ready = self.queued.pop(0)
            ready.synchronize()  # this step's copy only, not the work queued after it
            out.append(self.record(step, figures, learning_rate))
        return out
