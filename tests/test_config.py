from pathlib import Path

import pytest
import yaml

from tangpoem.config import Config, keys_of, load_config, parse_set
from tangpoem.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_homeworks():
    cfg = Config()
    assert cfg.model_name_or_path == "MediaTek-Research/Breeze-7B-Instruct-v0_1"
    assert (cfg.seed, cfg.num_train_data, cfg.num_epochs, cfg.learning_rate) == (42, 1040, 1, 3e-4)
    assert (cfg.micro_batch_size, cfg.batch_size, cfg.gradient_accumulation_steps) == (4, 16, 4)
    assert (cfg.cutoff_len, cfg.warmup_steps, cfg.logging_steps, cfg.save_steps, cfg.save_total_limit) == (256, 50, 20, 65, 3)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.no_repeat_ngram_size, cfg.max_new_tokens) == (True, 0.1, 0.3, 3, 128)


@pytest.mark.parametrize("name", ["breeze-colab-t4", "taide-colab-t4", "tiny-cpu"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert load_config(name) == cfg  # a bare name finds the file in configs/


# How the rows are laid out on the GPU; none of them changes what is learned (rows per step, schedule, loss).
LAYOUT_KEYS = {"micro_batch_size", "padding_free", "answer_logits_only", "kbit_fp32_upcast"}


@pytest.mark.parametrize("name", ["breeze-colab-t4", "taide-colab-t4", "breeze-h100"])
def test_gpu_configs_keep_the_homeworks_training(name):
    """The GPU configs differ from the defaults (the homework's values) in layout, speed levers and how often
    they save only (balanced_steps changes which shuffled rows share a step; not how many, nor the schedule)."""
    cfg, defaults = load_config(name).to_dict(), Config().to_dict()
    levers = set(keys_of("levers")) | {"micro_batch_size", "gradient_checkpointing", "compute_dtype"}
    where = {"model_name_or_path", "output_dir", "save_steps"}
    differ = {k for k in cfg if cfg[k] != defaults[k]}
    assert differ <= levers | where, differ - levers - where
    if name.endswith("colab-t4"):  # a T4: no bf16, no compiled kernels, checkpointing kept; a save every 10 steps
        assert differ - where == LAYOUT_KEYS | {"fused_rms_norm", "fused_lora", "checkpointed_layers"}
        assert cfg["save_steps"] == 10


def test_set_overrides_are_typed():
    cfg = load_config("tiny-cpu", parse_set(["learning_rate=1e-4", "max_steps=3", "do_sample=false",
                                             "lora_target_modules=q_proj,v_proj", "data_dir=/x"]))
    assert cfg.learning_rate == 1e-4 and cfg.max_steps == 3 and cfg.do_sample is False
    assert cfg.lora_target_modules == ["q_proj", "v_proj"] and cfg.data_dir == "/x"
    assert load_config(None, {"max_steps": "null"}).max_steps is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"top_p": "1.5"}, "'top_p' = 1.5: must be in (0, 1]"),
        ({"top_p": "0"}, "'top_p' = 0.0: must be in (0, 1]"),
        ({"learning_rate": "-1e-4"}, "'learning_rate' = -0.0001: must be > 0"),
        ({"batch_size": "10"}, "must be a multiple of micro_batch_size"),
        ({"num_train_data": "6000"}, "between 1 and 5001"),
        ({"device": "tpu"}, "must be one of auto, cpu, cuda"),
        ({"micro_batch_size": "four"}, "expected int, got 'four'"),
        ({"do_sample": "maybe"}, "expected bool"),
        ({"learning_rat": "1"}, "unknown config key 'learning_rat'"),
        ({"learning_rate": "nan"}, "'learning_rate' = nan: must be a finite number"),
        ({"max_grad_norm": "inf"}, "'max_grad_norm' = inf: must be a finite number"),
        ({"seed": "-1"}, "'seed' = -1: must be between 0 and 2**32 - 1"),
        ({"checkpoint_index": "latest"}, "'checkpoint_index' = 'latest': must be a whole number (0 the first, -1 the last) or best"),
        ({"checkpoint_index": "1.5"}, "'checkpoint_index': expected int | str, got 1.5"),
        ({"val_size": "-4"}, "'val_size' = -4: must be a row count"),
        ({"val_size": "2.5"}, "'val_size' = 2.5: must be a row count (0, 64, ...) or a fraction of num_train_data"),
        ({"val_size": "4000"}, "'val_size' = 4000: asks for 4000 rows; the course has 3961 after the first num_train_data (1040)"),
        ({"best_metric": "bleu"}, "'best_metric' = 'bleu': must be val_loss, or one or more of char_f1, form, pingze, rhyme joined by +"),
        ({"best_metric": "val_loss+char_f1"}, "must be val_loss, or one or more of"),
        ({"early_stopping_patience": "2"}, "'early_stopping_patience' = 2: needs validation rows: set val_size"),
        ({"early_stopping_threshold": "-0.1", "val_size": "8"}, "'early_stopping_threshold' = -0.1: must be >= 0"),
        ({"report_to": "mlflow"}, "'report_to' = ['mlflow']: must be none, or one or more of tensorboard, trackio, wandb"),
        ({"report_to": "none,tensorboard"}, "must be none, or one or more of"),
        ({"max_bad_steps": "-1"}, "'max_bad_steps' = -1: must be >= 0"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(InputError, match=None) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_checkpoint_index_best_and_the_evaluation_keys_from_yaml_and_set(tmp_path):
    (tmp_path / "eval.yaml").write_text("base: tiny-cpu\ncheckpoint_index: best\nval_size: 0.1\nbest_metric: char_f1+pingze\n"
                                        "report_to: [tensorboard, trackio]\n", encoding="utf-8")
    cfg = load_config(tmp_path / "eval.yaml")
    assert (cfg.checkpoint_index, cfg.val_size, cfg.best_metric, cfg.report_to) == ("best", 0.1, "char_f1+pingze", ["tensorboard", "trackio"])
    cfg = load_config("tiny-cpu", parse_set(["checkpoint_index=best", "val_size=64", "report_to=tensorboard"]))
    assert (cfg.checkpoint_index, cfg.val_size, cfg.report_to) == ("best", 64, ["tensorboard"])
    assert load_config("tiny-cpu", parse_set(["checkpoint_index=-2"])).checkpoint_index == -2
    from tangpoem.config import effective_yaml

    assert yaml.safe_load(effective_yaml(cfg)) == cfg.to_dict()
    defaults = Config()
    assert (defaults.val_size, defaults.checkpoint_index, defaults.report_to, defaults.early_stopping_patience) == (0, -1, ["none"], 0)


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nlearning_rate: [\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_set_needs_key_value():
    with pytest.raises(InputError, match="expected key=value"):
        parse_set(["learning_rate"])


def test_a_config_file_states_its_differences_from_a_base(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: breeze-colab-t4\nlearning_rate: 1.0e-4\n", encoding="utf-8")
    cfg, base = load_config(tmp_path / "mine.yaml"), load_config("breeze-colab-t4")
    assert cfg.learning_rate == 1e-4 and {k: v for k, v in cfg.to_dict().items() if k != "learning_rate"} == \
        {k: v for k, v in base.to_dict().items() if k != "learning_rate"}
    (tmp_path / "a.yaml").write_text("base: b.yaml\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n", encoding="utf-8")
    with pytest.raises(InputError, match="'base:' chain returns to this file"):
        load_config(tmp_path / "a.yaml")


def test_overrides_of_none_keep_the_files_values_and_sources_are_kept():
    from tangpoem.config import config_sources, describe

    cfg = load_config("nano-cpu", {"learning_rate": None, "max_steps": 3}, source="notebook")
    assert cfg.learning_rate == load_config("nano-cpu").learning_rate and cfg.max_steps == 3
    assert config_sources(cfg)["max_steps"] == "notebook" and config_sources(cfg)["learning_rate"].endswith("nano-cpu.yaml")
    assert describe(cfg).startswith("config: defaults < ") and describe(cfg).endswith("< notebook max_steps=3")


def test_the_effective_config_file_reads_back_as_the_same_config():
    from tangpoem.config import effective_yaml

    cfg = load_config("taide-colab-t4", {"max_steps": 3})
    assert yaml.safe_load(effective_yaml(cfg)) == cfg.to_dict()


@pytest.mark.parametrize("case", ["directory", "not utf-8"])
def test_unreadable_config_files_are_one_line(tmp_path, case):
    path = tmp_path / "cfg.yaml"
    if case == "directory":
        path.mkdir()
        expected = f"{path}: is a directory, not a config file"
    else:
        path.write_bytes("learning_rate: 1\n# 註解\n".encode("big5"))
        expected = f"{path}: not UTF-8 text"
    with pytest.raises(InputError) as e:
        load_config(path)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)
