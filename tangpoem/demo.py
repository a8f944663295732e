"""`tangpoem demo`: the whole homework on tangpoem-nano, offline, on a CPU in minutes.

Before fine-tuning (the demo couplets) → LoRA fine-tuning on the course rows → the 15 test poems
into results.txt → grading against Tang_testing_gt.txt → the demo couplets again, after.
"""

from __future__ import annotations

import time

from tangpoem.checkpoints import list_checkpoints
from tangpoem.config import Config
from tangpoem.generate import DEMO_COUPLETS, demo_rows, generate, generate_test_results, load_for_generation
from tangpoem.grade.course import grade_results, grades_table
from tangpoem.train import train


def _show(title: str, couplets: tuple[str, ...], poems: list[str]) -> None:
    print(f"\n== {title}")
    for couplet, poem in zip(couplets, poems):
        print(f"  {couplet} → {poem}")


def run_demo(cfg: Config) -> int:
    started = time.perf_counter()
    print(f"tangpoem demo: {cfg.model_name_or_path}, {cfg.num_train_data} course rows, output in {cfg.output_dir}")

    # 1. the pre-trained model alone, before fine-tuning
    base, tokenizer, _ = load_for_generation(cfg, adapter=None)
    _show("before fine-tuning 微調前", DEMO_COUPLETS, generate(base, tokenizer, demo_rows(), cfg, progress=False))
    del base

    # 2. LoRA fine-tuning (a finished earlier run in the same output_dir is resumed, i.e. reused)
    resume = bool(list_checkpoints(cfg.output_dir))
    print(f"\n== LoRA fine-tuning 微調{' (resuming the run in ' + cfg.output_dir + ')' if resume else ''}")
    train(cfg, resume=resume)

    # 3. the 15 test poems, in the course's submission format
    print("\n== the test poems 測試集")
    files = generate_test_results(cfg, progress=False)
    print(f"wrote {files.txt} and {files.json}")

    # 4. grading against the ground truth
    result = grade_results(cfg)
    print(f"\n== grades 評分 ({cfg.results_path / 'results.txt'} vs Tang_testing_gt.txt)")
    print(grades_table(result))

    # 5. the demo couplets again, with the adapter
    tuned, tokenizer, adapter = load_for_generation(cfg)
    _show(f"after fine-tuning 微調後 ({adapter.name if adapter else 'no adapter'})", DEMO_COUPLETS,
          generate(tuned, tokenizer, demo_rows(), cfg, progress=False))
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0
