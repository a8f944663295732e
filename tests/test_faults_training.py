"""Faults in a training run's files and disk, injected: every case ends in one line naming the file, key or
run and what to do (exit 2 for bad input, 1 for a run that cannot go on), and nothing the user had is lost.

The disk-full cases mount a small tmpfs (root only); elsewhere they are skipped with the reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tangpoem.checkpoints import LOCK_FILE, list_checkpoints, load_training_state
from tangpoem.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = ["--config", "tiny-cpu", "--set", "num_train_data=16", "--set", "max_new_tokens=4", "--set", "learning_rate=1e-2",
        "--set", "warmup_steps=0"]


def _train(out: Path, *extra: str, steps: int = 8) -> int:
    return main(["train", *TINY, "--set", f"output_dir={out}", "--set", f"max_steps={steps}", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run: checkpoint-4 and checkpoint-8."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert _train(out) == 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]
    return out


@pytest.mark.parametrize("damage", ["truncated adapter", "empty adapter", "truncated state", "missing adapter config"])
def test_a_damaged_latest_checkpoint_is_skipped_and_the_newest_good_one_used(trained, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    latest = out / "checkpoint-8"
    file = {"truncated adapter": "adapter_model.safetensors", "empty adapter": "adapter_model.safetensors",
            "truncated state": "training_state.pt", "missing adapter config": "adapter_config.json"}[damage]
    data = (latest / file).read_bytes()
    if damage.startswith("missing"):
        (latest / file).unlink()
    else:
        (latest / file).write_bytes(b"" if damage.startswith("empty") else data[: len(data) // 2])
    capsys.readouterr()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "checkpoint-8 is damaged" in warning and file in warning, warning

    assert main(["generate", *TINY, "--set", f"output_dir={out}"]) == 0  # generation takes checkpoint-4
    assert "checkpoint-4" in capsys.readouterr().out
    assert _train(out, "--resume") == 0  # so does resuming; its new checkpoint-8 replaces the damaged one
    printed = capsys.readouterr().out
    assert "resume: from" in printed and "checkpoint-4 (step 4 of 8)" in printed
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-8"]


def test_temp_folders_of_a_killed_save_are_removed_at_the_next_start(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / ".checkpoint-12.abc123.tmp").mkdir()
    (out / ".checkpoint-12.abc123.tmp" / "adapter_model.safetensors").write_bytes(b"half")
    assert _train(out, "--resume") == 0
    assert not list(out.glob(".checkpoint-*.tmp"))
    assert "removed 1 unfinished checkpoint folder" in capsys.readouterr().out


def test_a_second_run_into_the_same_output_dir_is_refused_naming_the_first(trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # a live process of this host holds the lock
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "then"}))
        result = subprocess.run([sys.executable, "-m", "tangpoem.cli", "train", *TINY, "--set", f"output_dir={out}",
                                 "--set", "max_steps=2"], capture_output=True, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip() == (f"error: {out}: another run is training into it (pid {holder.pid} on "
                                         f"{os.uname().nodename}, since then); wait for it to end, or choose another "
                                         f"output_dir (if that run is gone, delete {LOCK_FILE})")
        assert not list_checkpoints(out)
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed without cleaning up: its lock is stale and does not block
    assert _train(out, steps=2) == 0
    assert not (out / LOCK_FILE).exists()


def test_a_lock_from_another_host_goes_stale_once_untouched(tmp_path, capsys):
    """A Colab runtime after a disconnect is another host, its output_dir on Drive: the old runtime's lock is
    respected while fresh, and taken over once untouched for LOCK_STALE_SECONDS."""
    from tangpoem.checkpoints import LOCK_STALE_SECONDS

    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_FILE
    lock.write_text(json.dumps({"pid": 12345, "host": "colab-runtime-before-the-disconnect", "started": "then"}))
    assert _train(out, steps=2) == 2
    assert "another run is training into it (pid 12345 on colab-runtime-before-the-disconnect" in _one_error_line(capsys)
    old = time.time() - LOCK_STALE_SECONDS - 1
    os.utime(lock, (old, old))
    assert _train(out, steps=2) == 0
    assert not lock.exists() and list_checkpoints(out)


def test_a_training_run_touches_its_lock_every_step(tiny_config):
    from tangpoem.train import train

    cfg = tiny_config(num_train_data=16, max_steps=3)
    lock = Path(cfg.output_dir) / LOCK_FILE
    ages = []

    def age_the_lock(step, record):
        ages.append(time.time() - lock.stat().st_mtime)
        old = time.time() - 1000
        os.utime(lock, (old, old))  # as if untouched for long: the next step must touch it again

    train(cfg, on_step_end=[age_the_lock])
    assert len(ages) == 3 and all(age < 100 for age in ages), ages


def test_two_runs_started_together_never_share_an_output_dir(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "tangpoem.cli", "train", *TINY, "--set", f"output_dir={out}",
                              "--set", "max_steps=4", "--set", f"learning_rate={lr}"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for lr in ("1e-2", "1e-3")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] == 2, results
    refused = next(err for code, err in results if code == 2)
    assert "another run is training into it" in refused or "holds checkpoints of an earlier run" in refused, refused
    rates = {load_training_state(p)["config"]["learning_rate"] for p in list_checkpoints(out)}
    assert len(rates) == 1 and list_checkpoints(out)  # every checkpoint is the one run's


def test_a_resume_that_changes_what_is_learned_is_refused_one_line_per_key(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert _train(out, "--resume", "--set", "learning_rate=1e-3", "--set", "lora_r=4") == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: {out}: resuming checkpoint-8 would change what is learned:",
        "  lora_r: 8 in checkpoint-8, 4 now",
        "  learning_rate: 0.01 in checkpoint-8, 0.001 now",
        "set them back, choose another output_dir, or resume anyway with --force",
    ]
    assert _train(out, "--resume", "--set", "num_train_data=32") == 2  # other rows, same keys
    assert "the training rows (data_dir, num_train_data, cutoff_len or the tokenizer) differ" in capsys.readouterr().err
    assert _train(out, "--resume", "--force", "--set", "learning_rate=1e-3", steps=10) == 0
    assert [p.name for p in list_checkpoints(out)][-1] == "checkpoint-10"


def test_a_resume_onto_another_model_is_refused_before_loading_it(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert _train(out, "--resume", "--set", "model_name_or_path=tiny-llama") == 2
    err = capsys.readouterr().err
    assert "  model_name_or_path: 'tiny-mistral' in checkpoint-8, 'tiny-llama' now" in err
    assert "size mismatch" not in err and len(err.splitlines()) == 4  # the key, and its tokenizer makes other rows


@pytest.mark.parametrize("case", ["adapter", "output_dir", "results_dir"])
def test_paths_of_the_wrong_kind_are_one_line(tmp_path, capsys, case, trained):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    if case == "adapter":
        code = main(["generate", *TINY, "--set", f"output_dir={trained}", "--adapter", str(tmp_path)])
        expected = f"error: --adapter {tmp_path}: not a LoRA adapter folder (adapter_config.json missing); give a checkpoint-N folder"
    elif case == "output_dir":
        code = _train(a_file, steps=1)
        expected = f"error: config key 'output_dir' = '{a_file}': a file is in the way; choose a folder"
    else:
        code = main(["generate", *TINY, "--set", f"output_dir={trained}", "--set", f"results_dir={a_file}"])
        expected = f"error: results folder {a_file}: a file is in the way; choose a folder (results_dir)"
    assert code == 2
    assert _one_error_line(capsys) == expected
    assert a_file.read_text() == "not a folder"


# ----------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few hundred KB, or a skip saying why there is none."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(size_kb: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
        return mount

    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def _size_kb(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024 + 1


def test_a_full_disk_while_saving_names_itself_and_keeps_the_last_checkpoint(trained, small_disk, capsys):
    checkpoint_kb = _size_kb(trained / "checkpoint-4")
    disk = small_disk(int(checkpoint_kb * 1.6) + 64)  # room for one checkpoint and the small files, not two
    out = disk / "run"
    assert _train(out, "--set", "save_total_limit=5") == 1
    assert _one_error_line(capsys) == ("error: no space left on device while writing checkpoint-8 in "
                                       f"{out}; checkpoint-4 kept; free some space, then resume")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert not list(out.glob(".checkpoint-*.tmp")) and not (out / LOCK_FILE).exists()
    # the failed write's files are closed, not kept open (deleted but still taking the full disk's space)
    assert not [path for path in _open_files() if path.startswith(str(disk))]


def _open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return paths


def test_a_full_disk_while_writing_results_keeps_the_old_pair(trained, small_disk, capsys):
    disk = small_disk(12)  # three 4 KB pages: the old pair and a filler take them all
    (disk / "results.txt").write_text("old txt\n")
    (disk / "results.json").write_text("[]\n")
    (disk / "filler").write_bytes(b"x")
    assert main(["generate", *TINY, "--set", f"output_dir={trained}", "--set", f"results_dir={disk}"]) == 1
    assert _one_error_line(capsys).startswith(f"error: no space left on device while writing {disk}/results.txt and results.json")
    assert (disk / "results.txt").read_text() == "old txt\n" and (disk / "results.json").read_text() == "[]\n"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "results.json", "results.txt"]


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path):
    """SIGKILL mid-run: no cleanup runs, the lock file stays; the next run (a resume) takes it over."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tangpoem.cli", "train", *TINY, "--set", f"output_dir={out}",
                             "--set", "max_steps=40", "--set", "save_steps=2"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list_checkpoints(out) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_FILE).exists() and list_checkpoints(out)
    assert main(["train", *TINY, "--set", f"output_dir={out}", "--set", "max_steps=40", "--set", "save_steps=2", "--resume"]) == 0
    assert list_checkpoints(out)[-1].name == "checkpoint-40" and not (out / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- guards for the T4: divergence, out of memory

def _inject(monkeypatch, fault):
    """Wrap the run's micro-step: `fault(rows, call, loss_fn)` sees each micro-batch (call counts from 0)."""
    import tangpoem.train as recipe

    real = recipe.eager_micro_loss

    def wrapped(*args, **kwargs):
        eager = real(*args, **kwargs)
        calls = []

        def micro_loss(rows, num_items, last):
            calls.append(len(rows))
            return fault(rows, len(calls) - 1, lambda: eager(rows, num_items, last))

        return micro_loss

    monkeypatch.setattr(recipe, "eager_micro_loss", wrapped)


def test_a_run_whose_loss_turns_nan_stops_after_max_bad_steps_keeping_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    # tiny-cpu: 2 micro-batches a step; from step 6 on the loss is nan
    _inject(monkeypatch, lambda rows, call, loss: loss() * (float("nan") if call >= 10 else 1.0))
    assert _train(out, "--set", "max_bad_steps=3", steps=12) == 1
    line = _one_error_line(capsys)
    assert line == (f"error: training diverged: at step 8 the loss was inf/nan for 3 steps in a row (no loss scaling); "
                    f"checkpoint-4 kept in {out}; try `--set learning_rate=0.003`, then train again (max_bad_steps=3)")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]  # step 8 was not saved: its loss is nan
    history = json.loads((out / "loss_history.json").read_text(encoding="utf-8"))
    assert [h["step"] for h in history] == list(range(1, 9))  # the history on disk shows the bad steps
    assert not (out / LOCK_FILE).exists()


def _loss_scaling(monkeypatch):
    """A real GradScaler, enabled on the CPU here as on a T4 (fp16): it skips an update whose gradients hold
    inf/nan and lowers its scale."""
    import torch

    import tangpoem.train as recipe

    real = recipe.optimizer_and_schedule

    def with_loss_scaling(*args):
        optimizer, scheduler, _ = real(*args)
        return optimizer, scheduler, torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)

    monkeypatch.setattr(recipe, "optimizer_and_schedule", with_loss_scaling)


def test_isolated_bad_steps_are_counted_not_fatal(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _loss_scaling(monkeypatch)  # the scaler skips the nan steps' updates, so the weights stay good
    _inject(monkeypatch, lambda rows, call, loss: loss() * (float("nan") if call in (4, 10, 11) else 1.0))  # steps 3 and 6
    assert _train(out, "--set", "max_bad_steps=2", steps=8) == 0
    summary = json.loads((out / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["counts"] == {"non_finite_losses": 2, "skipped_steps": 2, "oom_retries": 0}
    assert "guards: 2 non finite losses, 2 skipped steps" in capsys.readouterr().out


def test_steps_the_fp16_loss_scaler_skips_are_counted_and_stop_the_run(tmp_path, capsys, monkeypatch):
    """From step 3 the gradients overflow once scaled: the scaler skips each update and lowers its scale; the
    loss itself stays finite."""
    _loss_scaling(monkeypatch)
    _inject(monkeypatch, lambda rows, call, loss: loss() * (1e36 if call >= 4 else 1.0))
    out = tmp_path / "run"
    assert _train(out, "--set", "max_bad_steps=3", "--set", "save_steps=2", steps=8) == 1
    line = _one_error_line(capsys)
    assert line.startswith("error: training diverged: at step 5 the loss scaler skipped the update for 3 steps in a row "
                           "(fp16 overflow); checkpoint-2, checkpoint-4 kept"), line
    assert "`--set compute_dtype=float32` (slower, no overflow)" in line


def test_out_of_memory_halves_the_micro_batches_and_trains_the_same(tiny_config, monkeypatch, capsys):
    """A micro-step that runs out of memory above 2 rows: the step is done again in micro-batches of 2, said
    once, and the run ends with the adapter of a run with micro_batch_size 2."""
    import torch
    from safetensors.torch import load_file

    from tangpoem.train import train

    common = {"num_train_data": 16, "max_steps": 6, "learning_rate": 1e-2, "warmup_steps": 0, "save_steps": 3}
    reference = train(tiny_config(**common, micro_batch_size=2, output_dir=str(tiny_config().output_dir) + "-reference"))
    capsys.readouterr()

    def fault(rows, call, loss):
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss()

    _inject(monkeypatch, fault)
    result = train(tiny_config(**common))  # micro_batch_size 4
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("out of memory")]
    assert said == ["out of memory at step 1 with micro-batches of 4 rows: from now on 2 (the same 8 rows per optimizer "
                    "step); `--set micro_batch_size=2` avoids the retry"]
    assert result.counts["oom_retries"] == 1
    assert [round(h["loss"], 5) for h in result.history] == [round(h["loss"], 5) for h in reference.history]
    a, b = (load_file(str(list_checkpoints(r.output_dir)[-1] / "adapter_model.safetensors")) for r in (reference, result))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_out_of_memory_at_one_row_stops_with_one_line(tmp_path, capsys, monkeypatch):
    import torch

    def fault(rows, call, loss):
        if call >= 4:  # steps 1 and 2 fit, then nothing does
            raise torch.OutOfMemoryError("CUDA out of memory")
        return loss()

    _inject(monkeypatch, fault)
    out = tmp_path / "run"
    assert _train(out, "--set", "save_steps=2", steps=4) == 1
    assert _one_error_line(capsys) == (
        "error: out of CUDA memory at step 3 with one row a micro-batch (no CUDA memory figures); checkpoint-2 kept; "
        "try `--set gradient_checkpointing=true` or `--set cutoff_len=128`, or a GPU with more memory")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and not (out / LOCK_FILE).exists()


def test_out_of_memory_with_layers_kept_names_recomputing_every_layer(tmp_path, capsys, monkeypatch):
    import torch

    def fault(rows, call, loss):
        raise torch.OutOfMemoryError("CUDA out of memory")

    _inject(monkeypatch, fault)
    assert _train(tmp_path / "run", "--set", "gradient_checkpointing=true", "--set", "checkpointed_layers=1", steps=2) == 1
    assert _one_error_line(capsys) == (
        "error: out of CUDA memory at step 1 with one row a micro-batch (no CUDA memory figures); no checkpoint kept; "
        "try `--set checkpointed_layers=2` or `--set cutoff_len=128`, or a GPU with more memory")
