"""Validation during training: held-out rows scored at each save, the best checkpoint picked by evidence,
pruning that keeps it, early stopping as transformers', and an evaluation that leaves the training as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tangpoem.checkpoints import ADAPTER_FILE, checkpoint_evaluation, checkpoint_step, list_checkpoints, pick_checkpoint
from tangpoem.cli import main
from tangpoem.config import load_config
from tangpoem.errors import InputError
from tangpoem.evaluate import (EVAL_FILE, EVAL_HISTORY_FILE, best_position, evaluations_without_improvement,
                               metric_value, pick_validation_rows)
from tangpoem.train import train

REPO = Path(__file__).resolve().parent.parent
SMALL = {"num_train_data": 16, "max_steps": 10, "learning_rate": 1e-2, "warmup_steps": 0, "save_steps": 4}


def _without_seconds(evaluations):
    return [{k: v for k, v in e.items() if k not in ("seconds", "samples")} for e in evaluations]


@pytest.mark.slow
def test_a_nano_run_scores_each_save_and_best_picks_the_best_figure(tmp_path, course_dir, capsys):
    """tangpoem-nano on the CPU: every save is evaluated on 64 held-out course rows; the figures are in the log,
    eval_history.json and each checkpoint; `checkpoint_index: best` picks the checkpoint with the best figure
    in generate, the notebooks' table and `tangpoem checkpoints`."""
    out = tmp_path / "nano"
    sets = ["--config", "nano-cpu", "--set", f"output_dir={out}", "--set", "num_train_data=96", "--set", "save_steps=2",
            "--set", "save_total_limit=10", "--data-dir", str(course_dir)]
    assert main(["train", *sets]) == 0
    log = capsys.readouterr().out
    history = json.loads((out / EVAL_HISTORY_FILE).read_text(encoding="utf-8"))
    assert [e["step"] for e in history] == [2, 4, 6]
    assert [line.split()[2] for line in log.splitlines() if line.startswith("eval ")] == ["2/6", "4/6", "6/6"]
    for figures, checkpoint in zip(history, list_checkpoints(out)):
        saved = checkpoint_evaluation(checkpoint)
        assert saved["step"] == checkpoint_step(checkpoint) and {k: saved[k] for k in figures} == figures
        assert len(saved["samples"]) == 4 and all(s["prediction"] for s in saved["samples"])
        assert EVAL_FILE in json.loads((checkpoint / "manifest.json").read_text())["files"]
        assert 0 <= figures["char_f1"] <= 1 and 0 <= figures["form"] <= 1 and figures["val_loss"] > 0
    # Each save is scored with its own adapter. (Whether the loss falls is not asserted: nano 2 was pre-trained
    # with continuation requests, so the course rows' validation loss starts near where the whole fine-tune ends,
    # 3.26 after 65 steps in benchmarks/results/nano-heldout.json; what fine-tuning changes is docs/nano.md's.)
    assert len({e["val_loss"] for e in history}) == 3
    samples = [[s["prediction"] for s in checkpoint_evaluation(c)["samples"]] for c in list_checkpoints(out)]
    assert samples[0] != samples[-1]

    for metric, choose in (("val_loss", min), ("char_f1", max), ("char_f1+pingze", max), ("rhyme", max)):
        values = [metric_value(e, metric) for e in history]
        expected = f"checkpoint-{history[values.index(choose(values))]['step']}"
        cfg = load_config("nano-cpu", {"output_dir": str(out), "checkpoint_index": "best", "best_metric": metric})
        assert pick_checkpoint(out, "best", metric).name == expected, metric
        from tangpoem.lessons import checkpoints_table

        table = checkpoints_table(cfg)
        assert [row[table.columns.index("path")] for row in table.rows if row[-1]] == [str(out / expected)]
        assert main(["checkpoints", *sets, "--set", "checkpoint_index=best", "--set", f"best_metric={metric}"]) == 0
        marked = [line for line in capsys.readouterr().out.splitlines() if "<- checkpoint_index" in line]
        assert len(marked) == 1 and f"{expected}  <- checkpoint_index (best {metric})" in marked[0] and "char_f1" in marked[0]
    assert main(["generate", *sets, "--set", "checkpoint_index=best"]) == 0
    best = f"checkpoint-{min(history, key=lambda e: e['val_loss'])['step']}"
    assert f"with {out / best}" in capsys.readouterr().out


def test_best_needs_validation_figures(tiny_config):
    plain = tiny_config(**{**SMALL, "max_steps": 4}, val_size=0)
    train(plain)
    assert checkpoint_evaluation(list_checkpoints(plain.output_dir)[0]) is None
    with pytest.raises(InputError, match="'checkpoint_index' = 'best': no checkpoint in .* has validation figures .*val_size > 0"):
        pick_checkpoint(plain.output_dir, "best", "val_loss")
    assert pick_checkpoint(plain.output_dir, -1, "val_loss").name == "checkpoint-4"  # by index as before


def test_evaluation_leaves_the_training_as_it_was(tiny_config):
    """Generation samples with its own seed and dropout is off while evaluating: with validation on, the
    losses and the adapter are those of a run without it (LoRA dropout on, so any stolen random draw shows)."""
    root = Path(tiny_config().output_dir)
    plain = train(tiny_config(**SMALL, val_size=0, output_dir=str(root / "plain")))
    evaluated = train(tiny_config(**SMALL, val_size=16, output_dir=str(root / "evaluated")))
    assert [e["step"] for e in evaluated.eval_history] == [4, 8, 10] and not plain.eval_history
    assert [h["loss"] for h in evaluated.history] == [h["loss"] for h in plain.history]
    a, b = (load_file(str(list_checkpoints(r.output_dir)[-1] / ADAPTER_FILE)) for r in (plain, evaluated))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert evaluated.model.training  # back in training mode after each evaluation


def test_pruning_never_removes_the_best(tiny_config):
    """save_total_limit 1 keeps the newest checkpoint and the best. The tiny random model's poems score best on
    平仄 at the first save (later ones are empty), so the best is an old checkpoint here."""
    cfg = tiny_config(**{**SMALL, "max_steps": 12}, val_size=16, save_total_limit=1, best_metric="pingze")
    result = train(cfg)
    history = json.loads((Path(cfg.output_dir) / EVAL_HISTORY_FILE).read_text(encoding="utf-8"))
    assert [e["step"] for e in history] == [4, 8, 12]
    best = history[best_position(history, "pingze")]["step"]
    assert best != 12, f"this test needs a best before the last save: {history}"
    assert [checkpoint_step(p) for p in result.checkpoints] == [best, 12]
    state = torch.load(result.checkpoints[-1] / "training_state.pt", weights_only=False)
    assert _without_seconds(state["eval_history"]) == _without_seconds(history)


def test_early_stopping_counts_as_transformers_callback_does():
    """Our count, replayed over a history, against transformers' EarlyStoppingCallback fed the same metrics
    (with the Trainer's best_metric update after each evaluation)."""
    from types import SimpleNamespace

    from transformers import EarlyStoppingCallback, TrainerControl, TrainerState

    sequences = [[3.0, 2.9, 2.95, 2.899, 2.5, 2.6, 2.7], [1.0, 1.0, 0.99, 1.2], [5.0, 4.0, 3.0, 2.0]]
    for values in sequences:
        for threshold in (0.0, 0.02):
            for greater in (False, True):
                args = SimpleNamespace(greater_is_better=greater, metric_for_best_model="m")
                callback, state, control = EarlyStoppingCallback(2, threshold), TrainerState(), TrainerControl()
                metric = "char_f1" if greater else "val_loss"
                for n, value in enumerate(values, start=1):
                    callback.check_metric_value(args, state, control, value)
                    if state.best_metric is None or (value > state.best_metric if greater else value < state.best_metric):
                        state.best_metric = value  # Trainer._determine_best_metric, after on_evaluate
                    ours = evaluations_without_improvement([{metric: v} for v in values[:n]], metric, threshold)
                    assert ours == callback.early_stopping_patience_counter, (values[:n], threshold, greater)


def test_early_stopping_ends_the_run_at_a_save(tiny_config, capsys):
    # no evaluation improves val_loss by more than 100: the second one stops the run (patience 1)
    cfg = tiny_config(**{**SMALL, "max_steps": 16}, val_size=16, early_stopping_patience=1, early_stopping_threshold=100.0)
    result = train(cfg)
    assert [h["step"] for h in result.history] == list(range(1, 9)) and [e["step"] for e in result.eval_history] == [4, 8]
    assert result.stopped_early.startswith("early stopping at step 8: val_loss has not improved by more than 100 in 1 evaluations")
    assert [p.name for p in result.checkpoints] == ["checkpoint-4", "checkpoint-8"]
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 8 and summary["stopped_early"] == result.stopped_early
    assert "early stopping at step 8" in capsys.readouterr().out


def test_ranking_figures():
    history = [{"val_loss": 3.0, "char_f1": 0.1, "pingze": 0.5}, {"val_loss": 2.0, "char_f1": 0.3, "pingze": 0.2},
               {"val_loss": 2.5, "char_f1": 0.2, "pingze": 0.7}, None]
    assert best_position(history, "val_loss") == 1
    assert best_position(history, "char_f1") == 1
    assert best_position(history, "pingze") == 2
    assert best_position(history, "char_f1+pingze") == 2  # means 0.30, 0.25, 0.45
    assert best_position([{"rhyme": None}, None], "rhyme") is None
    assert metric_value({"char_f1": 0.2, "pingze": None}, "char_f1+pingze") is None


def test_validation_rows_come_after_the_training_rows_and_follow_the_seed(course_dir):
    from tangpoem.data import load_train_rows

    cfg = load_config("tiny-cpu", {"num_train_data": 1040, "val_size": 64, "data_dir": str(course_dir)})
    rows = pick_validation_rows(cfg)
    course = load_train_rows(course_dir)
    positions = [course.index(r) for r in rows]
    assert len(rows) == 64 and min(positions) >= 1040 and positions == sorted(positions)
    assert pick_validation_rows(cfg) == rows
    assert pick_validation_rows(load_config("tiny-cpu", {**cfg.to_dict(), "seed": 7})) != rows
    fraction = load_config("tiny-cpu", {"num_train_data": 1040, "val_size": 0.05, "data_dir": str(course_dir)})
    assert len(pick_validation_rows(fraction)) == 52


def test_evaluation_inside_a_mixed_precision_loop_casts_the_adapters_inputs(tiny_config, course_dir):
    """On a GPU the loop runs under autocast with peft's cast of LoRA inputs switched off (training modes);
    evaluation generates without autocast, so its modes switch the cast back on: bf16 activations into fp32
    adapters would otherwise refuse to multiply (the CPU stands in, with a bf16 base). Afterwards the loop's
    setting is back."""
    from peft.helpers import disable_input_dtype_casting

    from tangpoem.data import load_test_rows
    from tangpoem.fast.levers import evaluation_modes
    from tangpoem.generate import generate
    from tangpoem.model import add_lora, load_base_model, load_tokenizer

    cfg = tiny_config(max_new_tokens=8, do_sample=False)
    model = add_lora(load_base_model(cfg).to(torch.bfloat16), cfg)
    tokenizer, rows = load_tokenizer(cfg), load_test_rows(course_dir)[:2]
    lora = next(m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    expected = generate(model, tokenizer, rows, cfg, progress=False)
    with disable_input_dtype_casting(model):  # the loop's mode under autocast
        with pytest.raises(RuntimeError, match="dtype"):
            generate(model, tokenizer, rows, cfg, progress=False)
        with evaluation_modes(model, cfg):
            assert generate(model, tokenizer, rows, cfg, progress=False) == expected
        assert lora.cast_input_dtype_enabled is False
