"""Batched generation: left padding changes nothing, the answer is cut by position, files are atomic."""

import json
import os
from pathlib import Path

import pytest
import torch

from tangpoem import tiny
from tangpoem.data import Row, load_test_rows
from tangpoem.generate import (
    cut_at_eos,
    generate,
    generate_test_results,
    generation_config,
    left_pad,
    write_results,
)
from tangpoem.model import fix_pad_token
from tangpoem.prompt import INSTRUCTION
from tangpoem.tokens import encode_prompt
from tangpoem.train import train


@pytest.fixture
def tiny_model(tiny_name):
    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[tiny_name]))
    return tiny.build_model(tiny_name, tokenizer).eval(), tokenizer


def test_left_pad():
    batch = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_eos():
    assert cut_at_eos([4, 5, 2, 0, 0], 2) == [4, 5]
    assert cut_at_eos([4, 5], 2) == [4, 5]


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_model, tiny_config, course_dir):
    """Left padding with an attention mask must not change what the model writes."""
    model, tokenizer = tiny_model
    rows = load_test_rows(course_dir)[:6]  # prompts of different lengths
    cfg = tiny_config(do_sample=False, no_repeat_ngram_size=0, max_new_tokens=12)
    batched = generate(model, tokenizer, rows, cfg, progress=False)
    one_by_one = [generate(model, tokenizer, [row], cfg, progress=False)[0] for row in rows]
    assert batched == one_by_one
    # and the answer is exactly the tokens after the prompt, decoded
    prompt = encode_prompt(tokenizer, rows[0].instruction, rows[0].input)
    with torch.no_grad():
        full = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(cut_at_eos(full[0, len(prompt):].tolist(), tokenizer.eos_token_id), skip_special_tokens=True)
    assert batched[0] == " ".join(expected.split())


def test_sampling_is_reproducible_under_a_seed(tiny_model, tiny_config, course_dir):
    model, tokenizer = tiny_model
    rows = load_test_rows(course_dir)[:4]
    cfg = tiny_config(temperature=1.0, top_p=1.0, max_new_tokens=10)
    first = generate(model, tokenizer, rows, cfg, progress=False)
    assert generate(model, tokenizer, rows, cfg, progress=False) == first
    assert generate(model, tokenizer, rows, tiny_config(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=7), progress=False) != first


def test_no_repeat_ngrams_are_honoured(tiny_model, tiny_config, course_dir):
    model, tokenizer = tiny_model
    cfg = tiny_config(temperature=1.0, top_p=1.0, max_new_tokens=40, no_repeat_ngram_size=2)
    for row in load_test_rows(course_dir)[:4]:
        prompt = encode_prompt(tokenizer, row.instruction, row.input)
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 generation_config=generation_config(cfg, tokenizer))
        seq = out[0].tolist()
        assert len(seq) > len(prompt) + 5
        for i in range(len(prompt), len(seq)):  # each new token completes a bigram never seen before it
            earlier = set(zip(seq[: i - 1], seq[1 : i - 1 + 1]))
            assert (seq[i - 1], seq[i]) not in earlier, i


def test_results_files_are_in_the_course_format(tmp_path):
    rows = [Row(INSTRUCTION, "白日依山盡，黃河入海流。"), Row(INSTRUCTION, "床前明月光，疑是地上霜。")]
    predictions = ["欲窮千里目，更上一層樓。", "舉頭望明月，低頭思故鄉。"]
    txt, js = write_results(rows, predictions, tmp_path / "out")
    assert txt.read_text(encoding="utf-8") == (
        "1. 白日依山盡，黃河入海流。欲窮千里目，更上一層樓。\n2. 床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。\n"
    )
    assert json.loads(js.read_text(encoding="utf-8"))[1] == {"instruction": INSTRUCTION, "input": rows[1].input, "predict": predictions[1]}
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json", "results.txt"]


def test_a_failed_write_leaves_the_old_results_whole(tmp_path, monkeypatch):
    rows = [Row(INSTRUCTION, "白日依山盡，黃河入海流。")]
    txt, _ = write_results(rows, ["old"], tmp_path)
    before = txt.read_text(encoding="utf-8")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_results(rows, ["new"], tmp_path)
    assert txt.read_text(encoding="utf-8") == before
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.txt"]  # no temp file left behind


@pytest.mark.slow
def test_train_then_generate_writes_15_well_formed_lines(tiny_config, course_dir):
    cfg = tiny_config(num_train_data=16, max_steps=4, max_new_tokens=16)
    train(cfg)
    files = generate_test_results(cfg)
    txt, js = files.txt, files.json
    lines = txt.read_text(encoding="utf-8").splitlines()
    test_rows = load_test_rows(course_dir)
    assert len(lines) == 15
    for number, (line, row) in enumerate(zip(lines, test_rows), start=1):
        assert line.startswith(f"{number}. {row.input}")
    assert len(json.loads(js.read_text(encoding="utf-8"))) == 15
    assert txt.parent == Path(cfg.output_dir)
