"""Validation during training: how good is each checkpoint, by the evidence of rows it never learned from.

The validation rows are course rows after the first `num_train_data` (the homework trains on those), `val_size`
of them picked by the seed. At each save the run measures, on those rows:
- `val_loss`: the loss over the answer tokens, as training computes it (no gradients, dropout off);
- the generation scores: the validation poems written with the run's own decoding and graded by
  tangpoem.grade against the real poems: `char_f1` (characters in common), `form` (the mean of "as many verses"
  and "every verse the right length"), `pingze` (平仄) and `rhyme` (押韻), each in [0, 1], higher is better.

`best_metric` ranks checkpoints by one of these, or by the mean of several scores ("char_f1+pingze");
early stopping counts evaluations without improvement as transformers' EarlyStoppingCallback does.
"""

from __future__ import annotations

import contextlib
import time
from statistics import fmean
from typing import Any, Callable, ContextManager, Sequence

import torch

from tangpoem.config import SCORES, Config, metric_parts, validation_rows
from tangpoem.data import Row, load_train_rows
from tangpoem.errors import InputError, RunError, setting
from tangpoem.runtime import rng_state, set_rng_state
from tangpoem.tokens import EncodedRow, collate, count_label_tokens, encode_training_rows

EVAL_FILE = "eval.json"  # in each checkpoint: its step's figures and a few of its validation poems
EVAL_HISTORY_FILE = "eval_history.json"  # in output_dir: the figures of every evaluation so far
FIGURES = ("val_loss", *SCORES)
SAMPLES = 4  # validation poems kept with each evaluation (checkpoint, tracking)


# ----------------------------------------------------------------------------- ranking

def lower_is_better(best_metric: str) -> bool:
    return metric_parts(best_metric) == ["val_loss"]


def metric_value(figures: dict[str, Any] | None, best_metric: str) -> float | None:
    """The figure `best_metric` ranks by: one figure, or the mean of several; None where one is missing."""
    values = [(figures or {}).get(part) for part in metric_parts(best_metric)]
    return None if any(v is None for v in values) else fmean(values)


def improves(value: float, best: float | None, best_metric: str, threshold: float = 0.0) -> bool:
    """Is `value` better than `best` by more than `threshold`?"""
    if best is None:
        return True
    better = value < best if lower_is_better(best_metric) else value > best
    return better and abs(value - best) > threshold


def best_position(evaluations: Sequence[dict[str, Any] | None], best_metric: str) -> int | None:
    """Which evaluation is the best (the earliest of equals); None if none has the figure."""
    best, position = None, None
    for i, figures in enumerate(evaluations):
        value = metric_value(figures, best_metric)
        if value is not None and improves(value, best, best_metric):
            best, position = value, i
    return position


def evaluations_without_improvement(history: Sequence[dict[str, Any]], best_metric: str, threshold: float) -> int:
    """transformers' EarlyStoppingCallback, replayed over the history: an evaluation counts as an improvement if
    it beats the best so far by more than `threshold`; the count restarts at each improvement."""
    best, waited = None, 0
    for figures in history:
        value = metric_value(figures, best_metric)
        if value is None:
            continue
        waited = 0 if improves(value, best, best_metric, threshold) else waited + 1
        if improves(value, best, best_metric):
            best = value
    return waited


# ----------------------------------------------------------------------------- the rows

def pick_validation_rows(cfg: Config) -> list[Row]:
    """`val_size` course rows from those after the first `num_train_data`, chosen by the seed, in file order."""
    rest = load_train_rows(cfg.data_dir)[cfg.num_train_data :]
    wanted = validation_rows(cfg)
    if wanted > len(rest):
        raise InputError(f"config key 'val_size' = {cfg.val_size!r}: the course file has {len(rest)} rows after the first "
                         f"num_train_data ({cfg.num_train_data}); lower val_size or num_train_data")
    chosen = torch.randperm(len(rest), generator=torch.Generator().manual_seed(cfg.seed))[:wanted]
    return [rest[i] for i in sorted(chosen.tolist())]


def reference_line(row: Row) -> str:
    """A course row's answer as a line of the course's GT file: the verses without punctuation, TAB-separated."""
    from tangpoem.grade.normalize import split_verses, strip_punctuation

    return "\t".join(v for v in (strip_punctuation(verse) for verse in split_verses(row.output or "")) if v)


# ----------------------------------------------------------------------------- the figures

@torch.no_grad()
def validation_loss(model: torch.nn.Module, rows: Sequence[EncodedRow], batch_size: int, pad_token_id: int,
                    device: torch.device, dtype: torch.dtype) -> float:
    """Sum of the token losses of every answer token / the answer tokens: the training loss, over these rows."""
    num_items = count_label_tokens(rows)
    total = torch.zeros((), device=device)
    autocast = device.type == "cuda" and dtype != torch.float32
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start : start + batch_size], pad_token_id).items()}
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            total += model(**batch, num_items_in_batch=num_items, use_cache=False).loss.float()
    return float(total)


def generation_scores(rows: Sequence[Row], predictions: Sequence[str]) -> tuple[dict[str, float | None], list[dict[str, str]]]:
    """The grader's means over the validation poems, and the first few poems beside their real endings."""
    from tangpoem.grade.grading import grade_predictions

    tests = [{"instruction": r.instruction, "input": r.input} for r in rows]
    mean = grade_predictions(list(predictions), [reference_line(r) for r in rows], tests, name="validation rows").mean
    form = [mean[k] for k in ("verse_count_ok", "lengths_ok") if mean[k] is not None]
    scores = {"char_f1": mean["char_f1"], "form": fmean(form) if form else None, "pingze": mean["pingze_score"],
              "rhyme": mean["rhyme_score"]}
    samples = [{"input": r.input, "prediction": p, "reference": r.output or ""} for r, p in zip(rows[:SAMPLES], predictions)]
    return scores, samples


class Evaluator:
    """Measures the model on the validation rows; the training's random state is left as it was (generation
    samples with its own seed), and the model is back in training mode afterwards."""

    def __init__(self, cfg: Config, tokenizer: Any, device: torch.device, dtype: torch.dtype,
                 modes: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        self.cfg, self.tokenizer, self.device, self.dtype, self.modes = cfg, tokenizer, device, dtype, modes
        self.rows = pick_validation_rows(cfg)
        self.encoded = encode_training_rows(tokenizer, self.rows, cfg.cutoff_len, cfg.prompt_mode).rows

    def summary(self) -> str:
        return f"validation: {len(self.rows)} course rows after the first {self.cfg.num_train_data}, at every save"

    def __call__(self, model: torch.nn.Module, step: int, epoch: float) -> tuple[dict[str, Any], list[dict[str, str]]]:
        from tangpoem.generate import generate

        started = time.perf_counter()
        training_rng = rng_state()
        try:
            with self.modes():
                model.eval()
                loss = validation_loss(model, self.encoded, self.cfg.micro_batch_size, self.tokenizer.pad_token_id,
                                       self.device, self.dtype)
                predictions = generate(model, self.tokenizer, self.rows, self.cfg, progress=False)
        except torch.OutOfMemoryError:
            raise RunError(f"out of memory while evaluating step {step} on {len(self.rows)} validation rows; lower "
                           f"{setting('generation_batch_size', max(1, self.cfg.generation_batch_size // 2))} "
                           "or val_size") from None
        finally:
            set_rng_state(training_rng)
            model.train()
        scores, samples = generation_scores(self.rows, predictions)
        figures = {"step": step, "epoch": epoch, "val_loss": loss, **scores, "seconds": round(time.perf_counter() - started, 3)}
        return figures, samples


def describe_figures(figures: dict[str, Any]) -> str:
    """One log line's worth: `val_loss 2.91  char_f1 0.123  form 0.80  pingze 0.55  rhyme 0.61`."""
    parts = [f"{name} {'-' if figures.get(name) is None else format(figures[name], '.4f' if name == 'val_loss' else '.3f')}"
             for name in FIGURES]
    return "  ".join(parts)
