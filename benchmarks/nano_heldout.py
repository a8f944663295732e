"""Learning you can see: tangpoem-nano before vs after LoRA fine-tuning, on our held-out poems.

    python benchmarks/nano_heldout.py --corpus ../shared/data/quan-tang-shi/tang_poems.jsonl

The held-out poems (tangpoem.nano.is_heldout) were kept out of nano's pre-training and are not among
the course's rows. Each is given in the course's test format (first couplet in, the rest out); the
continuations are graded with tangpoem's grader. Writes benchmarks/results/nano-heldout.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch

from tangpoem import nano
from tangpoem.config import load_config
from tangpoem.data import load_train_rows
from tangpoem.forms import count_accuracy, form_mix, majority_count_by_length, poem_form
from tangpoem.generate import generate, load_for_generation
from tangpoem.grade import grade_predictions
from tangpoem.grade.grading import prosody_verses
from tangpoem.grade.normalize import split_verses
from tangpoem.grade.prosody import continuation_pingze
from tangpoem.io import atomic_write_json
from tangpoem.train import list_checkpoints, train

RESULTS = Path(__file__).parent / "results" / "nano-heldout.json"


def score(rows, gt, predictions) -> dict[str, float]:
    graded = grade_predictions(predictions, gt, [{"instruction": r.instruction, "input": r.input} for r in rows])
    form_ok = [p.form.verse_count_ok * p.form.lengths_ok for p in graded.poems]
    # A regular poem (jueju: 4 verses, lüshi: 8) once the input couplet is put back, every verse of the
    # couplet's length: right form even where the true poem happens to be the other of the two lengths.
    regular = [p.form.lengths_ok * (p.form.verse_count + 2 in (4, 8)) for p in graded.poems]
    # The grader's pingze_score counts the input couplet too and skips wrong-length verses, so where
    # few predicted verses have the couplet's length (before fine-tuning) it mostly scores the couplet.
    # continuation_pingze: the model's own verses only, summed over all their checked positions.
    fit = known = 0
    for p in graded.poems:
        poem_fit, poem_known = continuation_pingze(*prosody_verses(p.input, p.verses))
        fit, known = fit + poem_fit, known + poem_known
    return {
        "form_accuracy": sum(form_ok) / len(form_ok),
        "verse_count_right": graded.mean["verse_count_ok"],
        "regular_form": sum(regular) / len(regular),
        "char_f1": graded.mean["char_f1"],
        "pingze_conformity": graded.mean["pingze_score"],
        "rhyme": graded.mean["rhyme_score"],
        "verse_length_rate": graded.mean["length_ok_rate"],
        "continuation_pingze": fit / known if known else 0.0,
        "continuation_pingze_positions": known,
    }


def references(rows, gt, course_rows, first: int) -> dict:
    """What the measures give without a model: the true continuations, a continuation taken from another
    held-out poem of the same form (the chance level of char F1), and the tone of the course rows'
    own continuations, the first `first` rows (those fine-tuned on) against the rest."""
    truth = [r.output for r in rows]
    forms_ = [poem_form(r.input + r.output) for r in rows]
    other = []
    for i, form in enumerate(forms_):  # the next held-out poem of the same form, cyclically
        j = next(j % len(rows) for j in range(i + 1, i + len(rows) + 1) if forms_[j % len(rows)] == form)
        other.append(truth[j])

    def course_tone(part: list) -> float:
        part_gt = ["\t".join(split_verses(r.output)) for r in part]
        return score(part, part_gt, [r.output for r in part])["continuation_pingze"]

    return {"true_continuation": score(rows, gt, truth), "another_poem_same_form": score(rows, gt, other),
            f"course_rows_0_{first - 1}_continuation_pingze": course_tone(course_rows[:first]),
            f"course_rows_{first}_{len(course_rows) - 1}_continuation_pingze": course_tone(course_rows[first:])}


def forms(gt: list[str], train_rows: list) -> dict:
    """The held-out and fine-tuning forms, and the strict-form ceiling of a couplet-only predictor."""
    heldout = [(length, count + 2) for length, count in map(poem_form, gt)]  # + the input couplet
    course = [poem_form(r.input + r.output) for r in train_rows]
    rule = majority_count_by_length(course)
    return {
        "heldout_mix": form_mix(heldout),
        "fine_tuning_mix": form_mix(course),
        "course_rule": {str(length): count for length, count in rule.items()},
        # Strict form needs the verse count right; the couplet gives the length, not the count.
        "strict_ceiling_course_rule": count_accuracy(rule, heldout),
        "strict_ceiling_heldout_majority": count_accuracy(majority_count_by_length(heldout), heldout),
    }


def verse_counts(predictions: list[str]) -> dict[str, int]:
    """How many verses each raw prediction holds, e.g. {"2": 180, "6": 20} (the text as the model wrote it
    after the couplet; the grader would first strip a repeated couplet or chat fragments)."""
    counts = Counter(poem_form(p)[1] for p in predictions)
    return {str(count): n for count, n in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/quan-tang-shi/tang_poems.jsonl"))
    parser.add_argument("--config", default="nano-cpu")
    parser.add_argument("--output-dir", default="outputs/nano-heldout")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    cfg = load_config(args.config, {"output_dir": args.output_dir})
    rows, gt = nano.heldout_rows(args.corpus, args.limit)
    print(f"{len(rows)} held-out poems")
    figures: dict[str, dict[str, float]] = {}
    written: dict[str, dict[str, int]] = {}
    timings: dict[str, float] = {}

    model, tokenizer, _ = load_for_generation(cfg, adapter=None)
    started = time.perf_counter()
    predictions = generate(model, tokenizer, rows, cfg)
    figures["before"], written["before"] = score(rows, gt, predictions), verse_counts(predictions)
    timings["generate_before_s"] = time.perf_counter() - started

    if not list_checkpoints(cfg.output_dir):
        started = time.perf_counter()
        train(cfg)
        timings["fine_tune_s"] = time.perf_counter() - started
    model, tokenizer, adapter = load_for_generation(cfg)
    started = time.perf_counter()
    predictions = generate(model, tokenizer, rows, cfg)
    figures["after"], written["after"] = score(rows, gt, predictions), verse_counts(predictions)
    timings["generate_after_s"] = time.perf_counter() - started

    print(f"{'measure':<30}{'before':>10}{'after':>10}")
    for name in figures["before"]:
        before, after = figures["before"][name], figures["after"][name]
        print(f"{name:<30}{before:>10.3f}{after:>10.3f}")
    import transformers, peft  # noqa: E401

    course_rows = load_train_rows(cfg.data_dir)

    atomic_write_json(args.results, {
        "what": "tangpoem-nano on held-out poems, before vs after LoRA fine-tuning (config " + args.config + ")",
        "device": "cpu: " + platform.processor() if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "cores": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "heldout_poems": len(rows), "config": cfg.to_dict(), "adapter": str(adapter),
        "pretrain": json.loads((nano.NANO_DIR / "pretrain_log.json").read_text(encoding="utf-8"))["final_val_loss"],
        "figures": figures, "verses_written": written,
        "forms": forms(gt, course_rows[: cfg.num_train_data]),
        "references": references(rows, gt, course_rows, cfg.num_train_data), "timings_s": timings,
    })
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
