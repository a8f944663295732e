"""Experiment tracking (`report_to`): each step's figures, the validation figures and sample poems, and the
effective config, sent to TensorBoard, trackio or Weights & Biases through one loop callback.

- tensorboard: event files in output_dir/tensorboard (torch.utils.tensorboard). In Colab or Jupyter:
  `%load_ext tensorboard` then `%tensorboard --logdir outputs/run/tensorboard`.
- trackio: a local SQLite store (trackio's own folder, or $TRACKIO_DIR), project "tangpoem"; offline.
  `trackio show --project tangpoem` opens its dashboard.
- wandb: offline unless $WANDB_MODE says otherwise (files in output_dir/wandb; `wandb sync` uploads them).

Scalars: train/loss, train/learning_rate, train/grad_norm, train/tokens_per_second, train/gpu_memory_gib (CUDA),
eval/<figure> at each evaluation; tables: the sample poems of each evaluation; text: the effective config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from tangpoem.callbacks import Callback, Record
from tangpoem.config import Config, effective_yaml
from tangpoem.errors import InputError
from tangpoem.evaluate import FIGURES

if TYPE_CHECKING:
    from tangpoem.train import Run

TENSORBOARD_DIR = "tensorboard"
PROJECT = "tangpoem"
SAMPLE_COLUMNS = ["couplet 上聯", "prediction 預測", "reference 原詩"]


def wanted(cfg: Config) -> list[str]:
    return [name for name in cfg.report_to if name != "none"]


def check_trackers(cfg: Config) -> None:
    """Refuse, before anything is loaded, a tracker that is not installed."""
    for name in wanted(cfg):
        if importlib.util.find_spec(name) is None:  # each tracker is installed under its own name
            raise InputError(f"config key 'report_to' = {cfg.report_to!r}: {name} is not installed; "
                             f"pip install {name} (or tangpoem[tracking]), or leave {name} out")


def run_name(output_dir: Path) -> str:
    """The output_dir's folder name and a short hash of its full path: one name per run, kept by a resume."""
    return f"{output_dir.name}-{hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:6]}"


# ----------------------------------------------------------------------------- the backends

class TensorBoard:
    def __init__(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops what the killed one logged after its checkpoint
        self.writer = SummaryWriter(str(run.output_dir / TENSORBOARD_DIR), purge_step=run.start_step + 1 if run.start_step else None)
        self.writer.add_text("config", "```yaml\n" + effective_yaml(run.cfg) + "```", run.start_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def table(self, name: str, rows: Sequence[Sequence[str]], step: int) -> None:
        lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
        lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbLike:
    """trackio and wandb share wandb's API: `init` gives a run with `log` and `finish`, and a `Table` type."""

    def __init__(self, module, run) -> None:  # noqa: ANN001 - the library and its run
        self.module, self.run = module, run

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def table(self, name: str, rows: Sequence[Sequence[str]], step: int) -> None:
        self.run.log({name: self.module.Table(columns=SAMPLE_COLUMNS, data=[list(r) for r in rows])}, step=step)

    def close(self) -> None:
        self.run.finish()


def trackio_backend(run: Run) -> WandbLike:
    import trackio

    return WandbLike(trackio, trackio.init(project=PROJECT, name=run_name(run.output_dir), config=run.cfg.to_dict(),
                                           resume="allow" if run.start_step else "never", embed=False,
                                           auto_log_cpu=False, auto_log_gpu=False))


def wandb_backend(run: Run) -> WandbLike:
    import wandb

    return WandbLike(wandb, wandb.init(project=PROJECT, name=run_name(run.output_dir), id=run_name(run.output_dir),
                                       resume="allow", config=run.cfg.to_dict(), dir=str(run.output_dir),
                                       mode=os.environ.get("WANDB_MODE", "offline")))


BACKENDS = {"tensorboard": TensorBoard, "trackio": trackio_backend, "wandb": wandb_backend}


# ----------------------------------------------------------------------------- the callback

class Tracker(Callback):
    """Every step's figures to each tracker; at each evaluation its figures and sample poems. The trackers are
    closed when the run ends, also when it fails (they are held by the run's modes)."""

    def __init__(self, run: Run, names: Sequence[str]) -> None:
        self.backends = [BACKENDS[name](run) for name in names]
        self.closed = False
        self.previous = time.perf_counter()  # the end of the previous step's callbacks
        run.modes.callback(self.close)

    def on_step_end(self, run: Run, record: Record) -> None:
        step = int(record["step"])
        now, seconds = time.perf_counter(), time.perf_counter() - self.previous
        tokens = sum(len(r.input_ids) for r in run.step_rows(step - 1))  # the step's rows, without padding
        values = {"train/loss": record["loss"], "train/learning_rate": record["learning_rate"],
                  "train/grad_norm": record["grad_norm"], "train/epoch": record["epoch"],
                  "train/tokens_per_second": tokens / max(seconds, 1e-9)}
        if run.device.type == "cuda":
            values["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        evaluated = run.eval_history and run.eval_history[-1]["step"] == step
        if evaluated:
            values.update({f"eval/{name}": run.eval_history[-1][name] for name in FIGURES if run.eval_history[-1][name] is not None})
        for backend in self.backends:
            backend.scalars(values, step)
            if evaluated:
                backend.table("eval/samples", [[s["input"], s["prediction"], s["reference"]] for s in run.eval_samples], step)
        self.previous = time.perf_counter() if evaluated else now  # the evaluation's time is not the next step's

    def on_train_end(self, run: Run) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for backend in self.backends:
                backend.close()


def tracker(run: Run) -> Tracker | None:
    """The run's tracking callback, on the main rank, if `report_to` names a tracker."""
    names = wanted(run.cfg)
    return Tracker(run, names) if names and run.ranks.is_main else None
