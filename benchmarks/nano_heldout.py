"""tangpoem-nano before vs after LoRA fine-tuning, on our held-out poems, against issue 20's targets.

    python benchmarks/nano_heldout.py --corpus ../shared/data/quan-tang-shi/tang_poems.jsonl \\
        --data-dir ../shared/data/GenAI-Hw5 [--model-dir candidates/nano2-a] [--results FILE]

The held-out poems come from scripts/nano_corpus.py (the split pre-training used). By default the
evaluation takes those the first nano never saw either (253 of 297), so every model is scored on the
same poems. Each poem is given in the course's test format (first couplet in, the rest out), decoded
with the homework's settings (configs/nano-cpu.yaml: temperature 0.1, top-p 0.3, no-repeat 3) before
and after the nano-cpu fine-tune on the course's first 1040 rows, and graded by tangpoem.grade.
Writes benchmarks/results/nano-heldout.json: every figure before and after, the baselines, and
whether each of the issue's targets is met.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import nano_corpus  # noqa: E402  (puts the repository root on sys.path too)

from tangpoem.config import load_config, parse_set  # noqa: E402
from tangpoem.data import Row, load_test_rows, load_train_rows  # noqa: E402
from forms import count_accuracy, form_mix, majority_count_by_length, poem_form  # noqa: E402  (scripts/forms.py)
from tangpoem.generate import generate, left_pad, load_for_generation  # noqa: E402
from tangpoem.grade import grade_predictions  # noqa: E402
from tangpoem.grade.grading import prosody_verses  # noqa: E402
from tangpoem.grade.normalize import split_verses  # noqa: E402
from tangpoem.grade.prosody import continuation_pingze  # noqa: E402
from tangpoem.io import atomic_write_json  # noqa: E402
from tangpoem.lessons import opening  # noqa: E402  (notebook 03's openings table counts the same)
from tangpoem.nano import NANO_DIR  # noqa: E402
from tangpoem.prompt import INSTRUCTION  # noqa: E402
from tangpoem.tokens import encode_prompt  # noqa: E402
from tangpoem.checkpoints import list_checkpoints  # noqa: E402
from tangpoem.train import train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "nano-heldout.json"
# What an editor's note leaves in a text: brackets of any kind, book titles, "一作" (a variant reading).
NOTE_MARK = re.compile(r"[（）()〖〗\[\]［］{}《》]|一作|見《")


# ----------------------------------------------------------------------------- the poems

def heldout_rows(poems: list[nano_corpus.Poem]) -> tuple[list[Row], list[str]]:
    """Poems in the course's test format: (rows with the first couplet as input, GT lines of the rest)."""
    rows = [Row(INSTRUCTION, p.paragraphs[0], "".join(p.paragraphs[1:])) for p in poems]
    return rows, ["\t".join(p.verses[2:]) for p in poems]


# ----------------------------------------------------------------------------- measures

def diversity(texts: list[str]) -> dict:
    """How alike the continuations are: the commonest 4-character openings, the most repeated verses."""
    openings = Counter(o for o in map(opening, texts) if o)
    verses = Counter(v for t in texts for v in split_verses(t))
    top = openings.most_common(1)[0][1] if openings else 0
    return {"top_opening_share": top / len(texts), "openings": dict(openings.most_common(5)),
            "repeated_verses": {v: n for v, n in verses.most_common(5) if n > 1}, "empty": sum(not o for o in map(opening, texts))}


def bigrams(texts: list[str]) -> list[str]:
    """Character bigrams inside verses, in order (none across a verse mark)."""
    return [v[i : i + 2] for t in texts for v in split_verses(t) for i in range(len(v) - 1)]


def distinct_bigrams(predicted: list[str], true: list[str]) -> dict:
    """Distinct bigrams / bigrams, for the model and the true continuations, over the same number of
    bigrams (the first n of each, n the smaller count): the share falls as a text grows, so a model
    that writes less would otherwise look more varied."""
    p, t = bigrams(predicted), bigrams(true)
    n = min(len(p), len(t)) or len(t)  # a model that wrote no bigram scores 0 against the whole truth

    def share(b: list[str]) -> float:
        return len(set(b[:n])) / len(b[:n]) if b else 0.0

    return {"model": share(p), "true": share(t), "compared_bigrams": n, "model_bigrams": len(p), "true_bigrams": len(t)}


@torch.no_grad()
def first_character(model: torch.nn.Module, tokenizer, rows: list[Row], cfg) -> dict:
    """The model's distribution over the continuation's first character, after the prompt. Near-greedy
    decoding writes its likeliest character: if one character is the likeliest after most couplets,
    most continuations begin with it, however flat the distribution is."""
    model.eval()
    device = next(model.parameters()).device
    likeliest: Counter[str] = Counter()
    top, entropy = [], []
    prompts = [encode_prompt(tokenizer, r.instruction, r.input, cfg.prompt_mode) for r in rows]
    for start in range(0, len(prompts), cfg.generation_batch_size):
        batch = {k: v.to(device) for k, v in left_pad(prompts[start : start + cfg.generation_batch_size], tokenizer.pad_token_id).items()}
        p = model(**batch).logits[:, -1].float().softmax(-1)  # (B, V)
        values, ids = p.max(-1)
        likeliest.update(tokenizer.convert_ids_to_tokens(ids.tolist()))
        top += values.tolist()
        entropy += (-(p * p.clamp_min(1e-12).log()).sum(-1)).tolist()
    return {"likeliest": dict(likeliest.most_common(5)), "mean_top_probability": sum(top) / len(top),
            "mean_entropy_nats": sum(entropy) / len(entropy)}


@torch.no_grad()
def stop_after_true_couplet(model: torch.nn.Module, tokenizer, rows: list[Row], cfg) -> dict:
    """P(EOS) after the prompt and the poem's own second couplet, by form (verse length x verses): whether the
    model, given the true text, ends a 4-verse poem there and goes on with an 8-verse one (`stop_by_probability`
    stops at P(EOS) >= 0.5). Against the verse counts it writes, this says whether a wrong count comes from not
    knowing the form or from the couplet it wrote."""
    model.eval()
    device = next(model.parameters()).device
    couplets = [re.match(r"(?:[^，。！？；、：]+[，。！？；、：]){2}", r.output).group(0) for r in rows]
    sequences = [encode_prompt(tokenizer, r.instruction, r.input, cfg.prompt_mode) + tokenizer(c, add_special_tokens=False)["input_ids"]
                 for r, c in zip(rows, couplets)]
    stop: list[float] = []
    for start in range(0, len(rows), cfg.generation_batch_size):
        batch = {k: v.to(device) for k, v in left_pad(sequences[start : start + cfg.generation_batch_size], tokenizer.pad_token_id).items()}
        stop += model(**batch).logits[:, -1].float().softmax(-1)[:, tokenizer.eos_token_id].tolist()
    forms = [poem_form(r.input + r.output) for r in rows]
    by_form = {f"{length}x{count}": [p for p, form in zip(stop, forms) if form == (length, count)] for length, count in sorted(set(forms))}
    right = sum((p >= 0.5) == (count == 4) for p, (_, count) in zip(stop, forms))
    return {"by_form": {f: {"poems": len(ps), "mean_stop_probability": round(sum(ps) / len(ps), 3), "stops": sum(p >= 0.5 for p in ps)}
                        for f, ps in by_form.items()},
            "verse_count_right_if_it_wrote_the_true_couplet": right / len(rows)}


def score(rows: list[Row], gt: list[str], predictions: list[str]) -> dict:
    graded = grade_predictions(predictions, gt, [{"instruction": r.instruction, "input": r.input} for r in rows])
    form_ok = [p.form.verse_count_ok * p.form.lengths_ok for p in graded.poems]
    # A regular poem (jueju: 4 verses, lüshi: 8) once the input couplet is put back, every verse of the
    # couplet's length: right form even where the true poem happens to be the other of the two lengths.
    regular = [p.form.lengths_ok * (p.form.verse_count + 2 in (4, 8)) for p in graded.poems]
    # The grader's pingze_score counts the input couplet too; continuation_pingze: the model's verses alone.
    fit = known = 0
    for p in graded.poems:
        poem_fit, poem_known = continuation_pingze(*prosody_verses(p.input, p.verses))
        fit, known = fit + poem_fit, known + poem_known
    return {
        "form_accuracy": sum(form_ok) / len(form_ok),
        "verse_count_right": graded.mean["verse_count_ok"],
        "regular_form": sum(regular) / len(regular),
        "verse_length_rate": graded.mean["length_ok_rate"],
        "char_f1": graded.mean["char_f1"],
        "pingze_conformity": graded.mean["pingze_score"],
        "continuation_pingze": fit / known if known else 0.0,
        "rhyme": graded.mean["rhyme_score"],
        "outputs_with_editorial_notes": sum(bool(NOTE_MARK.search(p)) for p in predictions),
        "verses_written": {str(k): n for k, n in sorted(Counter(poem_form(p)[1] for p in predictions).items())},
        "distinct_bigrams": distinct_bigrams(predictions, [r.output for r in rows]),
        **diversity(predictions),
    }


def baselines(rows: list[Row], gt: list[str], train_rows: list[Row]) -> dict:
    """What the measures give without a model: the true continuations; a continuation taken from another
    held-out poem of the same form (the chance level of char F1); a rule that picks the verse count from
    the couplet's verse length, learnt from the fine-tuning rows (strict form's couplet-only ceiling)."""
    truth = [r.output for r in rows]
    forms = [poem_form(r.input + r.output) for r in rows]
    other = []
    for i, form in enumerate(forms):  # the next held-out poem of the same form, cyclically
        j = next(j % len(rows) for j in range(i + 1, i + len(rows) + 1) if forms[j % len(rows)] == form)
        other.append(truth[j])
    rule = majority_count_by_length(poem_form(r.input + r.output) for r in train_rows)
    return {"true_continuation": score(rows, gt, truth), "another_poem_same_form": score(rows, gt, other),
            "couplet_length_rule": {"rule": {str(k): v for k, v in rule.items()}, "form_accuracy": count_accuracy(rule, forms)},
            "heldout_forms": form_mix(forms), "fine_tuning_forms": form_mix(poem_form(r.input + r.output) for r in train_rows)}


def targets(before: dict, after: dict, base: dict) -> dict:
    """Issue 20's targets, each with its figures and whether it is met."""
    def check(value: float, bound: float, at_most: bool = False) -> dict:
        return {"value": round(value, 4), "bound": round(bound, 4), "met": value <= bound if at_most else value >= bound}

    return {
        "no_4_character_opening_in_more_than_5pct": check(after["top_opening_share"], 0.05, at_most=True),
        "distinct_bigrams_at_least_0.80_of_true": check(after["distinct_bigrams"]["model"], 0.8 * after["distinct_bigrams"]["true"]),
        "strict_form_at_least_couplet_length_rule": check(after["form_accuracy"], base["couplet_length_rule"]["form_accuracy"]),
        "pingze_after_at_least_before_minus_0.02": check(after["pingze_conformity"], before["pingze_conformity"] - 0.02),
        "rhyme_at_least_0.6": check(after["rhyme"], 0.6),
        "char_f1_at_least_2x_same_form_chance": check(after["char_f1"], 2 * base["another_poem_same_form"]["char_f1"]),
        "no_editorial_notes_in_any_output": check(before["outputs_with_editorial_notes"] + after["outputs_with_editorial_notes"], 0, at_most=True),
    }


# ----------------------------------------------------------------------------- the run

def environment() -> dict:
    import peft
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"device": "cpu: " + (platform.processor() or platform.machine()) if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "cores": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "commit": commit or "unknown"}


def model_record(model_dir: Path, split: nano_corpus.Split) -> dict:
    """The model's pre-training log, and whether it was pre-trained on this split."""
    log_path = model_dir / "pretrain_log.json"
    log = json.loads(log_path.read_text(encoding="utf-8")) if log_path.is_file() else {}
    digest = log.get("data", {}).get("heldout_digest")
    return {"dir": str(model_dir), "heldout_loss": log.get("heldout_loss", log.get("final_val_loss")),
            "parameters": log.get("parameters"), "candidate": log.get("candidate", {}).get("name"),
            "pretrained_on_this_split": digest == split.report["heldout_digest"] if digest else "no digest: the first nano (own split)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/quan-tang-shi/tang_poems.jsonl"))
    parser.add_argument("--data-dir", help="the course files (default: $TANGPOEM_DATA_DIR or data/GenAI-Hw5)")
    parser.add_argument("--model-dir", type=Path, help="a candidate model directory (default: the shipped tangpoem-nano)")
    parser.add_argument("--config", default="nano-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--output-dir", help="fine-tuning output; an existing run there is reused (default: a fresh temporary folder)")
    parser.add_argument("--poems", choices=["common", "all"], default="common",
                        help="common: the held-out poems the first nano never saw either; all: every held-out poem")
    parser.add_argument("--limit", type=int, help="only the first N poems")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    overrides: dict = {"output_dir": args.output_dir or tempfile.mkdtemp(prefix="nano-heldout-"), **parse_set(args.overrides)}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.model_dir:
        overrides["model_name_or_path"] = str(args.model_dir)
    cfg = load_config(args.config, overrides)
    course_train = load_train_rows(cfg.data_dir)
    _, split = nano_corpus.prepare(args.corpus, [{"input": r.input, "output": r.output} for r in course_train])
    poems = (split.unseen_by_first_nano if args.poems == "common" else split.heldout)[: args.limit]
    rows, gt = heldout_rows(poems)
    test_rows = load_test_rows(cfg.data_dir)
    print(f"{len(rows)} held-out poems ({args.poems}); model {cfg.model_name_or_path}; fine-tuning into {cfg.output_dir}")

    figures, timings, test_openings = {}, {}, {}
    for stage in ("before", "after"):
        if stage == "after" and not list_checkpoints(cfg.output_dir):
            started = time.perf_counter()
            train(cfg)
            timings["fine_tune_s"] = round(time.perf_counter() - started, 1)
        model, tokenizer, adapter = load_for_generation(cfg, adapter=None if stage == "before" else "auto")
        started = time.perf_counter()
        predictions = generate(model, tokenizer, rows, cfg)
        timings[f"generate_{stage}_s"] = round(time.perf_counter() - started, 1)
        figures[stage] = score(rows, gt, predictions)
        figures[stage]["first_character"] = first_character(model, tokenizer, rows, cfg)
        figures[stage]["stop_after_true_second_couplet"] = stop_after_true_couplet(model, tokenizer, rows, cfg)
        figures[stage]["examples"] = [r.input + " → " + p for r, p in zip(rows[:8], predictions)]
        test_openings[stage] = diversity(generate(model, tokenizer, test_rows, cfg, progress=False))

    base = baselines(rows, gt, course_train[: cfg.num_train_data])
    goals = targets(figures["before"], figures["after"], base)
    for name, goal in goals.items():
        print(f"{'met ' if goal['met'] else 'MISS'} {name}: {goal['value']} (bound {goal['bound']})")
    atomic_write_json(args.results, {
        "what": "tangpoem-nano on held-out poems, before vs after LoRA fine-tuning, against issue 20's targets",
        **environment(), "model": model_record(Path(cfg.model_name_or_path) if args.model_dir else NANO_DIR, split),
        "poems": {"which": args.poems, "count": len(rows), "forms": base["heldout_forms"], "split": {
            k: v for k, v in split.report.items() if not isinstance(v, list)}},
        "config": cfg.to_dict(), "adapter": str(adapter), "targets": goals, "figures": figures, "baselines": base,
        "course_test_poems": test_openings, "timings_s": timings,
    })
    print(f"wrote {args.results}")


if __name__ == "__main__":
    nano_corpus.exit_on_input_error(main)
