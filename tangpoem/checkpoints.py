"""Checkpoints in an output_dir: written whole or not at all, listed oldest first, picked by index.

A checkpoint is a folder `checkpoint-N` (N optimizer steps done) holding the LoRA adapter (peft's
adapter_model.safetensors and adapter_config.json) and the training state a resumed run needs
(training_state.pt: optimizer, schedule, loss scaler, history, random state, config). It is written into
a temp folder and renamed into place, so a run killed at any moment leaves complete checkpoints only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tangpoem.errors import InputError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"
STATE_FILE = "training_state.pt"
HISTORY_FILE = "loss_history.json"


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))  # type: ignore[union-attr]


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first. Temp folders of an interrupted save are never listed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := CHECKPOINT_RE.match(path.name))
             and (path / ADAPTER_FILE).is_file() and (path / STATE_FILE).is_file()]
    return [path for _, path in sorted(found)]


def picked_index(count: int, index: int) -> int | None:
    """Which of `count` checkpoints `checkpoint_index` = `index` picks (Python indexing), or None if none."""
    return index % count if -count <= index < count else None


def pick_checkpoint(output_dir: str | os.PathLike, index: int = -1) -> Path:
    """The homework's pick-by-index over the checkpoint list (-1 = the last one)."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise InputError(f"{output_dir}: no checkpoints (train first)")
    picked = picked_index(len(checkpoints), index)
    if picked is None:
        raise InputError(f"config key 'checkpoint_index' = {index}: {output_dir} has {len(checkpoints)} checkpoints")
    return checkpoints[picked]


def save_checkpoint(model: torch.nn.Module, state: dict[str, Any], output_dir: Path, step: int, keep: int) -> Path:
    """Write the adapter and the training state into a temp folder, rename it into place; prune old ones."""
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


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
