"""Figures and notebook helpers: each figure function takes plain data and returns a Figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from tangpoem import lessons as notebook, plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_are_built_from_plain_data(tmp_path):
    labels = ["春", "花", "，", " ", "\n"]
    figures = {
        "temperature": plots.temperature_figure(labels, {0.5: [0.6, 0.2, 0.1, 0.05, 0.05], 2.0: [0.3] + [0.175] * 4}),
        "top": plots.top_k_top_p_figure(labels, [0.5, 0.2, 0.1, 0.1, 0.1], [True, True, False, False, False],
                                        [True, False, False, False, False], 2, 0.3),
        "lengths": plots.length_figure([10, 14, 14, 38], [120, 140, 300], cutoff_len=256),
        "mask": plots.label_mask_figure(["<s>", "[", "INST", "]", "春", "</s>"], [False] * 4 + [True] * 2, per_line=4),
        "loss": plots.loss_figure([{"step": 1, "loss": 3.0, "learning_rate": 1e-4}, {"step": 2, "loss": 2.5, "learning_rate": 2e-4}]),
        "empty loss": plots.loss_figure([]),
        "validation": plots.validation_figure(
            [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 5)],
            [{"step": 2, "val_loss": 2.9, "char_f1": 0.1, "form": 0.5, "pingze": None, "rhyme": 0.4},
             {"step": 4, "val_loss": 2.7, "char_f1": 0.2, "form": 0.7, "pingze": 0.6, "rhyme": 0.5}]),
        "no validation": plots.validation_figure([{"step": 1, "loss": 3.0}], []),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        saved = plots.save_png(fig, tmp_path / "figures" / f"{name}.png")
        assert saved.path.read_bytes()[:8] == PNG
        assert saved._repr_png_() == saved.path.read_bytes()  # Jupyter shows the very PNG that was written
    assert len(figures["temperature"].axes) == 2
    assert "2 learned" in figures["mask"].axes[0].get_title()
    assert "1 rows over cutoff_len" in figures["lengths"].axes[1].get_title()
    assert "last validation 2.700 at step 4" in figures["validation"].axes[0].get_title()
    assert [len(line.get_xdata()) for line in figures["validation"].axes[1].get_lines()] == [2, 2, 1, 2]  # a None is no point
    assert "val_size" in figures["no validation"].axes[1].get_title()


def test_blank_and_newline_tokens_stay_visible():
    assert plots._label(" ") == "' '" and plots._label("\n") == "\\n" and plots._label("春") == "春"


def test_a_saved_figure_shows_as_png_in_jupyter(tmp_path):
    """IPython's formatter finds the PNG (a bare Figure had none without pyplot's inline backend)."""
    from IPython.core.formatters import DisplayFormatter

    saved = plots.save_png(plots.loss_figure([{"step": 1, "loss": 3.0, "learning_rate": 1e-4}]), tmp_path / "f.png")
    data, _ = DisplayFormatter().format(saved)
    assert data["image/png"] == (tmp_path / "f.png").read_bytes()
    assert data["text/plain"] == f"<figure saved to {tmp_path / 'f.png'}>"


def _cjk(text: str) -> set[str]:
    return {c for c in text if "\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef"}


def test_the_shipped_cjk_font_covers_the_course_the_corpus_and_the_labels(course_dir):
    """Every Chinese character the figures can show: the course files, the prompt, nano's vocabulary (the
    全唐詩 corpus it was trained on) and the labels in the code that draws figures and notebooks."""
    from fontTools.ttLib import TTFont

    from tangpoem import nano
    from tangpoem.prompt import INSTRUCTION, SYSTEM_PROMPT

    font = TTFont(plots.FONT_FILE)
    covered = {chr(c) for c in font.getBestCmap()}
    assert font["name"].getDebugName(1) == plots.FONT_FAMILY
    assert plots.FONT_FILE.stat().st_size < 4_000_000  # "a few MB": the wheel carries it
    assert (plots.FONT_FILE.parent / "OFL.txt").read_text(encoding="utf-8").count("SIL OPEN FONT LICENSE Version 1.1") == 1
    wanted = _cjk(SYSTEM_PROMPT + INSTRUCTION)
    for name in ("Tang_training_data.json", "Tang_testing_data.json", "Tang_testing_gt.txt"):
        wanted |= _cjk((course_dir / name).read_text(encoding="utf-8"))
    wanted |= _cjk("".join(nano.load_tokenizer().get_vocab()))
    repo = plots.FONT_FILE.parent.parent.parent
    for source in ("tangpoem/plots.py", "tangpoem/lessons.py", "scripts/build_notebooks.py"):
        wanted |= _cjk((repo / source).read_text(encoding="utf-8"))
    assert sorted(wanted - covered) == []


def test_figures_draw_chinese_without_missing_glyphs_even_with_a_stale_font_cache(tmp_path, course_dir):
    """The font is registered by path: with it gone from matplotlib's font list (a cache made before it was
    installed), figures still find it, and no label falls back to boxes (matplotlib's "Glyph ... missing")."""
    import warnings

    from matplotlib import font_manager

    from tangpoem.data import load_train_rows

    font_manager.fontManager.ttflist[:] = [f for f in font_manager.fontManager.ttflist if f.name != plots.FONT_FAMILY]
    rows = load_train_rows(str(course_dir), 30)
    labels = list(dict.fromkeys("".join(r.output for r in rows)))[:20]
    with warnings.catch_warnings():
        # A missing glyph is a UserWarning. Only those: an "error" filter for every warning also turns the
        # ResourceWarning of an object an earlier test left to the garbage collector into noise in this one.
        warnings.simplefilter("error", UserWarning)
        for name, fig in {
            "temperature": plots.temperature_figure(labels, {0.5: [0.05] * 20, 2.0: [0.05] * 20}),
            "mask": plots.label_mask_figure(list(rows[0].instruction + rows[0].input), [False] * 40, per_line=20),
            "lengths": plots.length_figure([len(r.output) for r in rows], [100, 200], 256),
        }.items():
            plots.save_png(fig, tmp_path / f"{name}.png")
    used = font_manager.fontManager._find_fonts_by_props(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    assert [Path(p).name for p in used][0] == plots.FONT_FILE.name


def test_the_loss_curve_is_smoothed_and_titled_with_the_smoothed_loss():
    history = [{"step": s, "loss": loss, "learning_rate": 1e-4} for s, loss in enumerate([4.0, 2.0, 4.0, 2.0, 4.0, 2.0], start=1)]
    assert plots.smoothed([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # bias-corrected: a constant stays put
    smooth = plots.smoothed([h["loss"] for h in history])
    assert smooth[0] == 4.0 and 2.0 < smooth[-1] < 4.0 and smooth[-1] != 2.0
    title = plots.loss_figure(history).axes[0].get_title()
    assert f"smoothed loss {smooth[-1]:.3f} at step 6" in title and "last step alone 2.000" in title


def test_kept_tokens_match_transformers_warpers():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    dist = notebook.NextTokenDistribution("ctx", logits, [0, 1, 2, 3], ["a", "b", "c", "d"])
    assert dist.kept(top_k=2) == [True, True, False, False]
    assert dist.kept(top_p=0.5) == [True, False, False, False]  # 0.5 alone reaches p
    assert dist.kept(top_p=0.7) == [True, True, False, False]
    assert dist.kept() == [True] * 4
    assert dist.top_probs(0.01)[0] == pytest.approx(1.0)  # a low temperature is nearly greedy
    assert sum(dist.top_probs(100.0)) == pytest.approx(1.0)


def test_table_shows_as_markdown_and_text():
    table = notebook.Table(["a", "b|c"], [[1, 0.5], ["x\ny", None]])
    assert table._repr_markdown_().splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | 0.500 |", "| x<br>y | None |"]
    assert str(table).splitlines()[0] == "a    b|c"  # columns aligned to their widest cell ("x\ny")
    wide = notebook.Table(["#", "詩"], [[1, "白日"], [10, "ab"]])
    assert str(wide).splitlines() == ["#   詩", "1   白日", "10  ab"]  # a CJK character is two columns wide


def test_notebook_knobs_follow_the_one_rule():
    """A knob that is set wins over the config file, even at the homework's own value (the old rule kept
    nano-cpu's learning rate when the knob equalled Config's default); a knob left None keeps the file's."""
    from tangpoem.config import config_sources, load_config

    nano = load_config("nano-cpu")
    assert (nano.learning_rate, nano.lora_r) != (3e-4, 8)  # so that the override below is visible
    cfg = notebook.config_from_parameters("nano-cpu", {"learning_rate": 3e-4, "lora_r": 8, "output_dir": "x", "max_steps": None})
    assert (cfg.model_name_or_path, cfg.learning_rate, cfg.lora_r, cfg.output_dir) == ("tangpoem-nano", 3e-4, 8, "x")
    assert config_sources(cfg)["learning_rate"] == "notebook" and config_sources(cfg)["model_name_or_path"].endswith("nano-cpu.yaml")
    cfg = notebook.config_from_parameters("nano-cpu", {"learning_rate": None, "lora_r": None, "output_dir": None})
    assert (cfg.learning_rate, cfg.lora_r, cfg.output_dir) == (nano.learning_rate, nano.lora_r, nano.output_dir)
    assert notebook.config_from_parameters(None, {}).model_name_or_path.startswith("MediaTek-Research/Breeze")


def test_on_drive_is_a_no_op_outside_colab():
    assert notebook.on_drive("outputs/run", mount_drive=True) == "outputs/run"


def test_quantization_config_is_the_homeworks_and_shows_its_public_fields():
    pytest.importorskip("bitsandbytes")
    q = notebook.quantization_config_for(notebook.config_from_parameters(None, {}))
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant and q.load_in_4bit
    table = notebook.fields_table(q, notebook.QUANTIZATION_FIELDS)
    assert [row[:2] for row in table.rows] == [["load_in_4bit", "True"], ["bnb_4bit_quant_type", "nf4"],
                                               ["bnb_4bit_use_double_quant", "True"], ["bnb_4bit_compute_dtype", "torch.float16"],
                                               ["bnb_4bit_quant_storage", "torch.uint8"]]
    q.bnb_4bit_quant_type = "fp4"  # the table reads the real object's public fields (not to_dict()'s private keys)
    assert notebook.fields_table(q, notebook.QUANTIZATION_FIELDS).rows[1][:2] == ["bnb_4bit_quant_type", "fp4"]


def test_prepare_data_never_replaces_files_that_are_there(tmp_path, course_dir):
    """A broken local file is reported, not silently re-downloaded over (nothing lost)."""
    import shutil

    from tangpoem.errors import InputError

    for name in ("Tang_training_data.json", "Tang_testing_data.json", "Tang_testing_gt.txt"):
        shutil.copy(course_dir / name, tmp_path / name)
    assert "5001 training rows" in notebook.prepare_data(str(tmp_path))
    (tmp_path / "Tang_testing_data.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(InputError, match="record 0: expected an object"):
        notebook.prepare_data(str(tmp_path))
    assert (tmp_path / "Tang_testing_data.json").read_text(encoding="utf-8") == "[1]"


def test_on_drive_moves_the_configs_own_output_dir_in_colab(monkeypatch):
    """In Colab the config file's output_dir moves to Drive (mount_drive None means "in Colab"); False keeps it."""
    import sys
    import types

    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    unset = {"model_name_or_path": None, "output_dir": None}  # the parameters cell as shipped
    cfg = notebook.config_from_parameters("nano-cpu", unset)
    assert cfg.output_dir == f"{notebook.DRIVE_ROOT}/outputs/nano" and mounted == ["/content/drive"]
    assert notebook.config_from_parameters("nano-cpu", unset, mount_drive=False).output_dir == "outputs/nano"
