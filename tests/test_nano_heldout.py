"""benchmarks/nano_heldout.py's measures of issue 20, on continuations whose answers are worked out by hand."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("nano_heldout", REPO / "benchmarks" / "nano_heldout.py")
nano_heldout = importlib.util.module_from_spec(spec)
sys.modules["nano_heldout"] = nano_heldout
spec.loader.exec_module(nano_heldout)


def test_openings_skip_marks_and_count_empty_continuations() -> None:
    texts = ["不知何處去，春風又一年。", "不知，何處堪惆悵", "明月照高樓。", "", "不知何處去，秋風。"]
    figures = nano_heldout.diversity(texts)
    assert nano_heldout.opening(texts[1]) == "不知何處"  # the comma inside the first four characters is skipped
    assert figures["openings"]["不知何處"] == 3 and figures["empty"] == 1
    assert figures["top_opening_share"] == pytest.approx(3 / 5)  # an empty continuation counts in the denominator
    assert figures["repeated_verses"] == {"不知何處去": 2}


def test_distinct_bigrams_compare_equal_numbers_of_bigrams() -> None:
    predicted = ["春風春風，春風"]  # bigrams 春風 風春 春風 | 春風: 4 bigrams, 2 distinct
    true = ["白日依山盡，黃河入海流"]  # 8 bigrams, all distinct; the first 4 compared
    figures = nano_heldout.distinct_bigrams(predicted, true)
    assert figures["compared_bigrams"] == 4
    assert figures["model"] == pytest.approx(2 / 4) and figures["true"] == pytest.approx(1.0)
    assert (figures["model_bigrams"], figures["true_bigrams"]) == (4, 8)
    silent = nano_heldout.distinct_bigrams(["。", "春"], true)  # no bigram written: 0, against the whole truth
    assert (silent["model"], silent["true"], silent["compared_bigrams"]) == (0.0, 1.0, 8)


@pytest.mark.parametrize(("text", "note"), [
    ("白日依山盡，黃河入海流。", False),
    ("（見《輿地紀勝》卷八）", True),
    ("欲窮千里目一作望，更上一層樓", True),
    ("書成《漢書》", True),
])
def test_editorial_notes_in_outputs(text: str, note: bool) -> None:
    assert bool(nano_heldout.NOTE_MARK.search(text)) is note


def test_targets_pass_and_fail() -> None:
    def figures(**values):
        base = {"top_opening_share": 0.05, "distinct_bigrams": {"model": 0.73, "true": 0.9}, "form_accuracy": 0.7,
                "pingze_conformity": 0.90, "rhyme": 0.6, "char_f1": 0.121, "outputs_with_editorial_notes": 0}
        return {**base, **values}

    baselines = {"couplet_length_rule": {"form_accuracy": 0.7}, "another_poem_same_form": {"char_f1": 0.06}}
    just_met = nano_heldout.targets(figures(pingze_conformity=0.915), figures(), baselines)
    assert all(goal["met"] for goal in just_met.values()), just_met
    missed = nano_heldout.targets(
        figures(outputs_with_editorial_notes=1),
        figures(top_opening_share=0.06, distinct_bigrams={"model": 0.71, "true": 0.9}, form_accuracy=0.69,
                pingze_conformity=0.87, rhyme=0.59, char_f1=0.119),
        baselines)
    assert not any(goal["met"] for goal in missed.values()), missed


def test_first_character_reads_the_distribution_after_the_prompt(tiny_config) -> None:
    import math

    from tangpoem.data import Row
    from tangpoem.generate import load_for_generation
    from tangpoem.prompt import INSTRUCTION

    cfg = tiny_config(generation_batch_size=2)
    model, tokenizer, _ = load_for_generation(cfg, adapter=None)
    rows = [Row(INSTRUCTION, c) for c in ("白日依山盡，黃河入海流。", "春眠不覺曉，處處聞啼鳥。", "床前明月光，疑是地上霜。")]
    figures = nano_heldout.first_character(model, tokenizer, rows, cfg)
    assert sum(figures["likeliest"].values()) == len(rows)  # one likeliest token per prompt, batches of 2
    assert 0 < figures["mean_top_probability"] <= 1
    assert 0 <= figures["mean_entropy_nats"] <= math.log(len(tokenizer)) + 1e-6


def test_stop_after_the_true_second_couplet_by_form() -> None:
    """A stand-in model that ends a poem (P(EOS) 0.8) after a couplet ending 歸。 and goes on (0.1) otherwise."""
    import torch

    from tangpoem.config import load_config
    from tangpoem.data import Row
    from tangpoem.model import load_tokenizer

    cfg = load_config("nano-cpu", {"generation_batch_size": 2})
    tokenizer = load_tokenizer(cfg)
    home = tokenizer.convert_tokens_to_ids("歸")

    class EndsAtHome(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            logits = torch.full((*input_ids.shape, len(tokenizer)), -1e4)
            p_eos = torch.where(input_ids[:, -2] == home, 0.8, 0.1)
            logits[:, -1, tokenizer.eos_token_id] = p_eos.log()
            logits[:, -1, 0] = (1 - p_eos).log()
            return type("Output", (), {"logits": logits})()

    five, seven = "白日依山盡，黃河入海流。", "故人西辭黃鶴樓，煙花三月下揚州。"
    rows = [Row("", five, "欲窮千里目，更上一層歸。"),  # 5x4, ends: right
            Row("", five, "山高月小時，水落石出歸。" + "江山如畫裏，一時多少豪。" * 2),  # 5x8, ends: wrong
            Row("", five, "山高月小時，水落石出來。" + "江山如畫裏，一時多少豪。" * 2),  # 5x8, goes on: right
            Row("", seven, "孤帆遠影碧空盡，唯見長江天際流。")]  # 7x4, goes on: wrong
    figures = nano_heldout.stop_after_true_couplet(EndsAtHome(), tokenizer, rows, cfg)
    assert figures["by_form"] == {"5x4": {"poems": 1, "mean_stop_probability": 0.8, "stops": 1},
                                  "5x8": {"poems": 2, "mean_stop_probability": 0.45, "stops": 1},
                                  "7x4": {"poems": 1, "mean_stop_probability": 0.1, "stops": 0}}
    assert figures["verse_count_right_if_it_wrote_the_true_couplet"] == pytest.approx(2 / 4)
