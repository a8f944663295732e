"""A Colab disconnect, on the notebook path: notebook 05 killed the hard way after its first checkpoint (the
kernel and papermill with SIGKILL, no cleanup), then run again as it ships (resume = "auto"): it picks up
the checkpoint by itself and ends with the adapter and losses of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tangpoem.checkpoints import ADAPTER_FILE, list_checkpoints, load_training_state
from tangpoem.cli import main

REPO = Path(__file__).resolve().parent.parent
RUN = {"num_train_data": 16, "max_steps": 10, "save_steps": 2, "learning_rate": 1e-2, "warmup_steps": 0, "logging_steps": 2}


def _papermill(notebook_out: Path, config_file: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TANGPOEM_HEADLESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "05_finetune.ipynb"), str(notebook_out),
                             "-k", "python3", "--cwd", str(cwd), "-p", "config_file", str(config_file), "--log-level", "ERROR"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_notebook_05_killed_then_run_again_ends_with_the_uninterrupted_weights(tmp_path, course_dir):
    straight = tmp_path / "straight"
    sets = [a for k, v in {**RUN, "output_dir": straight, "data_dir": course_dir}.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "--config", "tiny-cpu", *sets]) == 0

    out = tmp_path / "notebook-run"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"base": "tiny-cpu", **RUN, "output_dir": str(out), "data_dir": str(course_dir)}))
    first = _papermill(tmp_path / "05-first.ipynb", config_file, tmp_path)
    deadline = time.time() + 600
    while not list_checkpoints(out) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "notebook 05 ended before it could be killed"
    for process in [*psutil.Process(first.pid).children(recursive=True), psutil.Process(first.pid)]:  # the kernel too
        process.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = [p.name for p in list_checkpoints(out)]
    assert killed_at and killed_at[-1] != "checkpoint-10", killed_at

    again = _papermill(tmp_path / "05-again.ipynb", config_file, tmp_path)
    stdout, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stderr[-3000:]
    executed = (tmp_path / "05-again.ipynb").read_text(encoding="utf-8")
    assert f"resume: from {out / killed_at[-1]}" in executed

    a, b = load_file(str(list_checkpoints(straight)[-1] / ADAPTER_FILE)), load_file(str(list_checkpoints(out)[-1] / ADAPTER_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[h["loss"] for h in load_training_state(list_checkpoints(d)[-1])["history"]] for d in (straight, out)]
    assert losses[0] == losses[1] and len(losses[0]) == 10
