"""Experiment tracking: a tiny run with report_to tensorboard and trackio writes what both libraries read back
(TensorBoard's EventAccumulator, trackio's local SQLite store): every step's figures, the validation figures
and sample poems at each save, and the effective config. The real libraries, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tangpoem.config import load_config
from tangpoem.errors import InputError
from tangpoem.tracking import TENSORBOARD_DIR, check_trackers, run_name

REPO = Path(__file__).resolve().parent.parent
STEPS, SAVES = 6, [3, 6]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, course_dir) -> tuple[Path, Path]:
    """A tiny run in its own process: trackio reads its store's folder ($TRACKIO_DIR) when first imported."""
    root = tmp_path_factory.mktemp("tracked")
    out, store = root / "run", root / "trackio"
    sets = {"output_dir": out, "num_train_data": 16, "max_steps": STEPS, "save_steps": 3, "val_size": 8,
            "report_to": "tensorboard,trackio", "learning_rate": 1e-2, "warmup_steps": 0}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TRACKIO_DIR": str(store),
           "TANGPOEM_DATA_DIR": str(course_dir)}
    done = subprocess.run([sys.executable, "-m", "tangpoem.cli", "train", "--config", "tiny-cpu", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, store


def test_tensorboard_event_files_hold_the_steps_the_evaluations_and_the_config(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tracked_run
    events = EventAccumulator(str(out / TENSORBOARD_DIR), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    for name in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
        assert [s.step for s in events.Scalars(f"train/{name}")] == list(range(1, STEPS + 1)), name
    assert all(s.value > 0 for s in events.Scalars("train/tokens_per_second"))
    for name in ("val_loss", "char_f1", "form"):
        assert [s.step for s in events.Scalars(f"eval/{name}")] == SAVES, name
    assert {"config/text_summary", "eval/samples/text_summary"} <= set(tags["tensors"]), tags["tensors"]
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode("utf-8")
    assert "report_to: [tensorboard, trackio]" in config and "val_size: 8" in config
    samples = events.Tensors("eval/samples/text_summary")
    assert [s.step for s in samples] == SAVES
    table = samples[0].tensor_proto.string_val[0].decode("utf-8")
    assert table.startswith("| couplet 上聯 | prediction 預測 | reference 原詩 |") and len(table.splitlines()) == 2 + 4


def test_the_trackio_store_holds_the_steps_the_evaluations_and_the_config(tracked_run, tmp_path):
    out, store = tracked_run
    code = f"""
import json
from trackio.sqlite_storage import SQLiteStorage
print(json.dumps({{"runs": SQLiteStorage.get_runs("tangpoem"), "logs": SQLiteStorage.get_logs("tangpoem", {run_name(out)!r}),
                  "config": SQLiteStorage.get_run_config("tangpoem", {run_name(out)!r})}}, default=str))
"""
    env = {**os.environ, "TRACKIO_DIR": str(store)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert read["runs"] == [run_name(out)]
    logs = read["logs"]
    assert sorted(entry["step"] for entry in logs if "train/loss" in entry) == list(range(1, STEPS + 1))
    assert sorted(entry["step"] for entry in logs if "eval/val_loss" in entry) == SAVES
    tables = [entry for entry in logs if "eval/samples" in entry]
    assert sorted(e["step"] for e in tables) == SAVES and tables[0]["eval/samples"]["_type"] == "trackio.table"
    assert len(tables[0]["eval/samples"]["_value"]) == 4 and "prediction 預測" in tables[0]["eval/samples"]["_value"][0]
    assert read["config"]["val_size"] == 8 and read["config"]["report_to"] == ["tensorboard", "trackio"]


def test_a_tracker_that_is_not_installed_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(InputError, match=r"'report_to' = \['wandb'\]: wandb is not installed; pip install wandb"):
        check_trackers(load_config("tiny-cpu", {"report_to": "wandb"}))
    check_trackers(load_config("tiny-cpu", {"report_to": "tensorboard"}))
