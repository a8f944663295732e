"""`tangpoem demo` (the README's main job), on nano with a few steps so the test stays short."""

import pytest

from tangpoem.cli import main


@pytest.mark.slow
def test_demo_runs_the_whole_homework_on_nano(tmp_path, course_dir, capsys):
    out = tmp_path / "demo"
    sets = ["--set", f"output_dir={out}", "--set", "num_train_data=32", "--set", "max_steps=2", "--set", "save_steps=2"]
    assert main(["demo", "--data-dir", str(course_dir), *sets]) == 0
    printed = capsys.readouterr().out
    for section in ("tangpoem demo: tangpoem-nano", "== before fine-tuning", "== LoRA fine-tuning", "== grades",
                    "== after fine-tuning 微調後 (checkpoint-2)", "done in"):
        assert section in printed, section
    assert (out / "results.txt").read_text(encoding="utf-8").count("\n") == 15
    assert (out / "grades.json").is_file()
    assert printed.count("相見時難別亦難，東風無力百花殘。 → ") == 2  # before and after
    # a second run reuses the finished training instead of refusing the output_dir
    assert main(["demo", "--data-dir", str(course_dir), *sets]) == 0
    assert "resuming the run in" in capsys.readouterr().out
