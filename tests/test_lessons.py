"""The notebooks' cell helpers show what their prose says, on the tiny model and the course data."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tangpoem import lessons
from tangpoem.config import load_config
from tangpoem.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    from tangpoem.model import load_base_model, load_tokenizer

    cfg = load_config("tiny-cpu")
    return cfg, load_base_model(cfg), load_tokenizer(cfg)


def test_the_batch_table_shows_where_a_row_ends_and_its_padding_starts(tiny, course_dir):
    from tangpoem.data import load_train_rows
    from tangpoem.tokens import collate, encode_training_rows

    cfg, _, tokenizer = tiny
    encoded = encode_training_rows(tokenizer, load_train_rows(str(course_dir), 16), cfg.cutoff_len)
    short, long = lessons.shortest_and_longest(encoded.rows)
    assert len(short.input_ids) < len(long.input_ids)
    table = lessons.batch_table(collate([short, long], tokenizer.pad_token_id), tokenizer, row=0, before=5, after=3)
    masks, labels = [row[3] for row in table.rows], [row[4] for row in table.rows]
    assert masks == [1] * 5 + [0] * 3
    assert labels[5:] == [IGNORE_INDEX] * 3 and labels[4] == tokenizer.eos_token_id  # EOS is learned, pads are not
    assert table.rows[4][1] == tokenizer.eos_token and table.rows[5][1] == tokenizer.pad_token == "<unk>"


def test_the_candidates_table_gives_probabilities_and_what_each_filter_keeps():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    dist = lessons.NextTokenDistribution("ctx", logits, [0, 1, 2, 3], ["春", "\n", "花", "月"])
    table = lessons.candidates_table(dist, top_k=2, top_p=0.6)
    assert [row[1] for row in table.rows] == ["春", "\\n", "花", "月"]  # a newline token stays visible
    assert [row[2] for row in table.rows] == ["0.4000", "0.3000", "0.2000", "0.1000"]
    assert [row[3] for row in table.rows] == ["0.4000", "0.7000", "0.9000", "1.0000"]
    assert [row[4] for row in table.rows] == ["✓", "✓", "✗", "✗"] and [row[5] for row in table.rows] == ["✓", "✓", "✗", "✗"]


def test_the_attention_mask_demo_matches_with_the_mask_and_moves_without_it():
    """On nano (a trained model, so the probabilities mean something): notebook 02's two rows."""
    from tangpoem.model import load_base_model, load_tokenizer

    cfg = load_config("nano-cpu")
    model, tokenizer = load_base_model(cfg), load_tokenizer(cfg)
    padded, unpadded = lessons.attention_mask_demo(model, tokenizer, ["相見時難", "相見時難別亦難，東風無力百花殘。"]).rows
    assert padded[1] == 12 and unpadded[1] == 0
    alone, masked, unmasked = (float(v) for v in padded[3:6])
    assert masked == pytest.approx(alone, abs=1e-4) and abs(unmasked - alone) > 0.05
    assert padded[6] != padded[2]  # without the mask, another token is the likeliest
    assert float(unpadded[3]) == float(unpadded[4]) == float(unpadded[5])


def test_the_parameters_table_counts_what_peft_counts(tiny):
    from tangpoem.model import add_lora, load_base_model

    cfg, _, _ = tiny
    model = add_lora(load_base_model(cfg), cfg)
    trainable, total = model.get_nb_trainable_parameters()
    table = lessons.parameters_table(model)
    counts = {row[0]: int(row[2].replace(",", "")) for row in table.rows}
    assert counts == {"trainable 訓練": trainable, "frozen 凍結": total - trainable}
    assert [row[1] for row in table.rows] == ["float32", "float32"]


def test_the_lora_table_reads_the_real_lora_config(tiny):
    from tangpoem.model import lora_config

    cfg, _, _ = tiny
    rows = {row[0]: row[1] for row in lessons.fields_table(lora_config(cfg), lessons.LORA_FIELDS).rows}
    assert rows["r"] == str(cfg.lora_r) and rows["lora_alpha"] == str(cfg.lora_alpha)
    assert rows["target_modules"] == ", ".join(sorted(cfg.lora_target_modules)) and rows["task_type"] == "CAUSAL_LM"


def test_the_homeworks_prompt_length_is_always_cutoff_len(tiny, course_dir):
    from tangpoem.data import load_train_rows
    from tangpoem.tokens import encode_prompt

    cfg, _, tokenizer = tiny
    row = load_train_rows(str(course_dir), 1)[0]
    homework, ours = lessons.homework_prompt_length(tokenizer, row, 256).rows
    assert homework[1] == 256 and ours[1] == len(encode_prompt(tokenizer, row.instruction, row.input)) < 256


def _grade(tmp_path, course_dir, lines):
    from tangpoem.grade import grade_paths

    results = tmp_path / "results.txt"
    results.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return grade_paths([results], course_dir / "Tang_testing_gt.txt", course_dir / "Tang_testing_data.json").files[0]


def test_repair_notes_only_when_something_was_repaired(tmp_path, course_dir):
    from tangpoem.data import load_test_rows

    rows = load_test_rows(str(course_dir))
    clean = _grade(tmp_path, course_dir, [f"{n}. {r.input}春風一夜來。" for n, r in enumerate(rows, start=1)])
    assert lessons.repair_notes(clean).startswith("no repairs and no notes")
    repeated = [f"{n}. {r.input}{r.input if n == 3 else ''}春風一夜來。" for n, r in enumerate(rows, start=1)]
    notes = lessons.repair_notes(_grade(tmp_path, course_dir, repeated))
    assert notes.startswith("1 note from the grader") and "- poem 3: input couplet repeated 2 times" in notes


def test_the_judge_cell_says_how_to_turn_it_on(tmp_path, course_dir):
    from tangpoem.data import load_test_rows

    rows = load_test_rows(str(course_dir))
    result = _grade(tmp_path, course_dir, [f"{n}. {r.input}春風一夜來。" for n, r in enumerate(rows, start=1)])
    for url, model in ((None, None), ("http://127.0.0.1:9/v1", None)):
        table = lessons.judge_table(result, url, model)
        assert "set judge_url" in table.rows[0][0] and "judge_model" in table.rows[0][0]
    assert result.judge is None  # nothing was asked


def test_hub_cache_on_drive_is_set_in_colab_only(monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert "only in Colab" in lessons.hub_cache_to_drive()
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    message = lessons.hub_cache_to_drive()
    import os

    assert os.environ["HF_HUB_CACHE"] == f"{lessons.DRIVE_ROOT}/{lessons.HUB_CACHE_DIR}" and mounted == ["/content/drive"]
    assert "Restart session" in message  # this test process imported huggingface_hub already


def test_notebook_messages_name_notebook_knobs(tmp_path):
    """After the config cell, a message that names a setting names the notebook's knob, not the CLI flag."""
    from tangpoem.errors import InputError
    from tangpoem.train import resume_point

    import torch
    from safetensors.torch import save_file

    from tangpoem.checkpoints import ADAPTER_CONFIG_FILE, ADAPTER_FILE, STATE_FILE

    folder = tmp_path / "checkpoint-2"  # a complete checkpoint (a damaged one would be skipped, not refused)
    folder.mkdir()
    torch.save({"step": 2}, folder / STATE_FILE)
    (folder / ADAPTER_CONFIG_FILE).write_text("{}", encoding="utf-8")
    save_file({"w": torch.zeros(1)}, str(folder / ADAPTER_FILE))
    from tangpoem.model import load_base_model

    lessons.config_from_parameters("tiny-cpu", {})
    try:
        with pytest.raises(InputError, match="`resume = True`"):
            resume_point(tmp_path, False, print)
        with pytest.raises(InputError, match="set `load_in_4bit = False` to run in float32 on the CPU"):
            load_base_model(load_config("tiny-cpu", {"load_in_4bit": True}))
    finally:
        from tangpoem.errors import speak_to

        speak_to("cli")


def test_a_cpu_runtime_loads_without_4bit_unless_the_knob_says_so(monkeypatch, capsys):
    """for_this_machine (the notebooks that load a model): no CUDA GPU, so the config file's load_in_4bit gives way, with a
    line saying so; a knob set by the student still wins, and without for_this_machine nothing changes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lessons.config_from_parameters("breeze-colab-t4", {}, mount_drive=False, for_this_machine=True).load_in_4bit is False
    assert "no CUDA GPU: loading without 4-bit (load_in_4bit = False)" in capsys.readouterr().out
    assert lessons.config_from_parameters("breeze-colab-t4", {"load_in_4bit": True}, mount_drive=False,
                                          for_this_machine=True).load_in_4bit is True
    assert lessons.config_from_parameters("breeze-colab-t4", {}, mount_drive=False).load_in_4bit is True
    assert "no CUDA GPU" not in capsys.readouterr().out


def test_before_after_switches_the_adapter_off_or_says_what_to_do(tmp_path):
    """Without 03's saved poems, "before" is the model with its adapter switched off; a merged model (or one
    without an adapter) cannot do that: one line naming 03's file and the two ways out."""
    from tangpoem.errors import InputError
    from tangpoem.generate import DEMO_COUPLETS
    from tangpoem.model import add_lora, load_base_model, load_tokenizer

    cfg = load_config("tiny-cpu", {"output_dir": str(tmp_path), "max_new_tokens": 4, "min_new_tokens": 0})
    tokenizer = load_tokenizer(cfg)
    with pytest.raises(InputError, match=r"demo.*no base-model poems of this model from 03.*run 03 first.*adapter_apart=True"):
        lessons.before_after(load_base_model(cfg), tokenizer, cfg, DEMO_COUPLETS[:2])
    torch.manual_seed(0)
    model = add_lora(load_base_model(cfg), cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1.0)  # an adapter that changes the poems
    table = lessons.before_after(model, tokenizer, cfg, DEMO_COUPLETS[:2])
    with model.disable_adapter():
        from tangpoem.generate import demo_rows, generate

        base = generate(model, tokenizer, demo_rows(DEMO_COUPLETS[:2]), cfg, progress=False)
    assert [row[1] for row in table.rows] == base
    assert [row[2] for row in table.rows] != base


def test_openings_table_gives_first_verses_and_each_settings_commonest_opening(tiny, course_dir):
    """One column per decoding setting: each couplet's first verse, then the commonest first four characters
    and how many continuations begin with them."""
    import dataclasses
    import re

    from tangpoem.data import load_test_rows
    from tangpoem.generate import demo_rows, generate
    from tangpoem.grade.normalize import split_verses

    cfg, model, tokenizer = tiny
    couplets = [r.input for r in load_test_rows(course_dir)][:6]
    variants = {"greedy": dict(do_sample=False, max_new_tokens=12), "sampled": dict(temperature=1.0, top_p=1.0, max_new_tokens=12)}
    table = lessons.openings(model, tokenizer, cfg, couplets, variants)
    assert table.columns == ["couplet 上聯", "greedy", "sampled"] and len(table.rows) == 7
    for index, (name, overrides) in enumerate(variants.items(), start=1):
        poems = generate(model, tokenizer, demo_rows(couplets), dataclasses.replace(cfg, **overrides), progress=False)
        assert [row[index] for row in table.rows[:-1]] == [(split_verses(p) or [""])[0] for p in poems]
        opening, count = re.fullmatch(r"(.*) \((\d+) of 6\)", table.rows[-1][index]).groups()
        assert int(count) == sum("".join(split_verses(p))[:4] == opening for p in poems) >= 1


def test_openings_skip_empty_continuations(monkeypatch):
    """An empty continuation (or one of verse marks only) has no opening: it never is the commonest one."""
    import tangpoem.generate

    cfg = load_config("tiny-cpu")
    monkeypatch.setattr(tangpoem.generate, "generate", lambda model, tokenizer, rows, cfg, progress: ["", "。", "", "春風，又綠"])
    table = lessons.openings(None, None, cfg, ["a", "b", "c", "d"], {"one": {}})
    assert table.rows[-1][1] == "春風又綠 (1 of 4)" and [r[1] for r in table.rows[:-1]] == ["", "", "", "春風"]
    monkeypatch.setattr(tangpoem.generate, "generate", lambda model, tokenizer, rows, cfg, progress: ["", "。"])
    assert lessons.openings(None, None, cfg, ["a", "b"], {"one": {}}).rows[-1][1] == "none (0 of 2)"
    assert lessons.opening("不知，何處堪惆悵") == "不知何處"
