"""Checkpoints in an output_dir: written whole or not at all, checked when listed, picked by index.

A checkpoint is a folder `checkpoint-N` (N optimizer steps done) holding the LoRA adapter (peft's
adapter_model.safetensors and adapter_config.json), the training state a resumed run needs
(training_state.pt: optimizer, schedule, loss scaler, history, random state, config), with validation on
(`val_size`) eval.json (that step's validation figures and a few of its poems), and, written last,
manifest.json (each file's size). It is filled in a temp folder and renamed into place, so a run killed at
any moment leaves complete checkpoints only; one damaged afterwards (a truncated copy, a full disk) is
skipped with one line, and the newest good one is used instead.

`checkpoint_index` picks one by position (-1: the last) or, with "best", by `best_metric` over the eval.json
files; pruning (`save_total_limit`) never removes the best.

One run at a time writes an output_dir: a lock file names its process, host and start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from tangpoem.errors import InputError, RunError
from tangpoem.evaluate import EVAL_FILE, best_position
from tangpoem.io import atomic_dir, atomic_write_json, display_path, umask_mode

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"  # written last: the files of the checkpoint and their sizes
HISTORY_FILE = "loss_history.json"
LOCK_FILE = ".tangpoem.lock"
STALE_TEMP_GLOB = ".checkpoint-*.tmp"  # what a save killed midway leaves behind


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- checking

def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file starts with the length of its JSON header, then the header: both must be there."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "no header"
        length = int.from_bytes(head, "little")
        if length > path.stat().st_size - 8:
            return "header cut short"
        try:
            json.loads(f.read(length))
        except ValueError:
            return "header unreadable"
    return None


def adapter_problem(folder: Path) -> str | None:
    """Why `folder` holds no loadable peft adapter, or None."""
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_FILE):
        if not (folder / name).is_file():
            return f"{name} missing"
    try:
        json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{ADAPTER_CONFIG_FILE} unreadable"
    problem = _safetensors_problem(folder / ADAPTER_FILE)
    return f"{ADAPTER_FILE}: {problem}" if problem else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be used, or None: files missing, sizes other than its manifest
    recorded, headers unreadable. Checkpoints of older versions (no manifest) are checked without sizes."""
    if not (folder / STATE_FILE).is_file():
        return f"{STATE_FILE} missing"
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} unreadable"
    for name, size in (manifest or {}).get("files", {}).items():
        actual = (folder / name).stat().st_size if (folder / name).is_file() else None
        if actual != size:
            return f"{name}: {'missing' if actual is None else f'{actual:,} bytes'}, the manifest says {size:,}"
    if not zipfile.is_zipfile(folder / STATE_FILE):  # torch.save writes a zip; a cut one has no directory
        return f"{STATE_FILE} cut short or unreadable"
    return adapter_problem(folder)


_REPORTED: set[tuple[str, float]] = set()


def _report_damaged(folder: Path, problem: str) -> None:
    """One line per damaged checkpoint per process (listings repeat)."""
    key = (str(folder), folder.stat().st_mtime)
    if key not in _REPORTED:
        _REPORTED.add(key)
        print(f"warning: {display_path(folder)} is damaged ({problem}); skipped", file=sys.stderr)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The usable checkpoints, oldest first. Temp folders of an interrupted save are never listed; a damaged
    checkpoint is skipped with one line on stderr."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if (match := CHECKPOINT_RE.match(path.name)) and path.is_dir():
            if problem := checkpoint_problem(path):
                _report_damaged(path, problem)
            else:
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_evaluation(checkpoint: Path) -> dict[str, Any] | None:
    """The validation figures saved with a checkpoint (eval.json), or None (trained without validation)."""
    try:
        return json.loads((checkpoint / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def best_checkpoint(checkpoints: list[Path], best_metric: str) -> Path | None:
    """The checkpoint with the best `best_metric` (the earliest of equals), or None if none was evaluated."""
    position = best_position([checkpoint_evaluation(p) for p in checkpoints], best_metric)
    return None if position is None else checkpoints[position]


def picked_index(checkpoints: list[Path], index: int | str, best_metric: str) -> int | None:
    """Which of `checkpoints` `checkpoint_index` = `index` picks (Python indexing, or "best"), or None if none."""
    if index == "best":
        best = best_checkpoint(checkpoints, best_metric)
        return None if best is None else checkpoints.index(best)
    count = len(checkpoints)
    return index % count if -count <= index < count else None


def pick_checkpoint(output_dir: str | os.PathLike, index: int | str, best_metric: str) -> Path:
    """The homework's pick-by-index over the checkpoint list (-1 = the last one), or the best by `best_metric`."""
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise InputError(f"{display_path(output_dir)}: no checkpoints (train first)")
    picked = picked_index(checkpoints, index, best_metric)
    if picked is None and index == "best":
        raise InputError(f"config key 'checkpoint_index' = 'best': no checkpoint in {display_path(output_dir)} has validation "
                         f"figures for best_metric {best_metric!r}; train with val_size > 0, or pick by index (-1: the last)")
    if picked is None:
        raise InputError(f"config key 'checkpoint_index' = {index}: {display_path(output_dir)} has {len(checkpoints)} checkpoints")
    return checkpoints[picked]


# ----------------------------------------------------------------------------- writing

def is_disk_full(exc: BaseException, where: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain, or torch.save's zip writer failing (its message hides the errno)
    while the disk is all but full."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    if isinstance(exc, RuntimeError) and "inline_container" in str(exc):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(where).free < 64 * 2**20
    return False


def save_checkpoint(model: torch.nn.Module, state: dict[str, Any], output_dir: Path, step: int, keep: int,
                    evaluation: dict[str, Any] | None = None, best_metric: str = "val_loss") -> Path:
    """Write the adapter, the training state, the step's validation figures (if any) and (last) the manifest
    into a temp folder, rename it into place, then prune the oldest beyond `keep`, never the best by
    `best_metric`. A full disk leaves the earlier checkpoints as they were."""
    final = output_dir / f"checkpoint-{step}"
    try:
        with atomic_dir(final) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            torch.save(state, tmp / STATE_FILE)
            if evaluation is not None:
                atomic_write_json(tmp / EVAL_FILE, evaluation)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            atomic_write_json(tmp / MANIFEST_FILE, {"step": step, "files": files})
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc, output_dir):
            raise
        kept = [p.name for p in list_checkpoints(output_dir)]
        raise RunError(f"no space left on device while writing {final.name} in {display_path(output_dir)}; "
                       f"{', '.join(kept) or 'no checkpoint'} kept; free some space, then resume") from None
    prune_checkpoints(output_dir, keep, best_metric)
    return final


def prune_checkpoints(output_dir: Path, keep: int, best_metric: str) -> None:
    """Remove the checkpoints older than the newest `keep`, except the best (as transformers' Trainer keeps it)."""
    checkpoints = list_checkpoints(output_dir)
    best = best_checkpoint(checkpoints, best_metric)
    for old in checkpoints[:-keep]:
        if old != best:
            shutil.rmtree(old, ignore_errors=True)


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


def clean_stale_temps(output_dir: Path) -> list[str]:
    """Remove the temp folders of saves that were killed midway (only the run holding the lock may)."""
    stale = [p for p in output_dir.glob(STALE_TEMP_GLOB) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in stale]


# ----------------------------------------------------------------------------- one run per output_dir

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


LOCK_STALE_SECONDS = 600  # a lock its run has not touched for this long is stale (the run touches it every step)


def _holder(lock: Path) -> dict[str, Any] | None:
    """The lock's holder, or None if it is stale: its process is gone (this host); or, from another host (a
    Colab runtime after a disconnect is a new host, its output_dir on Drive), it has not been touched for
    LOCK_STALE_SECONDS; or the file is unreadable and older than a minute (a writer killed between creating
    and filling it)."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            raise ValueError
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?"} if age < 60 else None
    if holder.get("host") == socket.gethostname():
        return holder if _alive(holder["pid"]) else None
    return holder if age < LOCK_STALE_SECONDS else None


def touch_lock(output_dir: Path) -> None:
    """The run holding `output_dir` says it is alive (a lock left untouched by another host goes stale)."""
    with contextlib.suppress(OSError):
        os.utime(output_dir / LOCK_FILE)


@contextlib.contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """Held while a run trains into `output_dir`; a second run is refused with one line naming the holder.
    A lock left by a killed process of this host does not block."""
    lock = output_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, umask_mode())
        except FileExistsError:
            holder = _holder(lock)
            if holder is None:
                lock.unlink(missing_ok=True)  # stale: take it over
                continue
            elsewhere = ("" if holder.get("host") == socket.gethostname() else
                         f"; it is taken over {LOCK_STALE_SECONDS // 60} minutes after that run's last step")
            raise InputError(f"{display_path(output_dir)}: another run is training into it (pid {holder.get('pid')} on "
                             f"{holder.get('host')}, since {holder.get('started')}); wait for it to end, or choose another "
                             f"output_dir (if that run is gone, delete {LOCK_FILE}{elsewhere})") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text(encoding="utf-8")).get("pid") == me["pid"]:
                lock.unlink()
