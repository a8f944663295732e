"""Model loading on the CPU: LoRA from the config, the pad token, and clear errors."""

import pytest
import torch

from tangpoem import tiny
from tangpoem.config import Config
from tangpoem.errors import InputError
from tangpoem.model import add_lora, fix_pad_token, load_model, resolve_compute_dtype


def test_load_model_gives_lora_on_every_target(tiny_config, tiny_name):
    model, tokenizer = load_model(tiny_config(model_name_or_path=tiny_name))
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    lora_layers = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert lora_layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)  # the base stays frozen
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert next(model.parameters()).dtype == torch.float32  # CPU: plain float32


def test_an_unknown_target_module_is_a_config_error(tiny_config):
    tokenizer = fix_pad_token(tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES["tiny-mistral"]))
    model = tiny.build_model("tiny-mistral", tokenizer)
    with pytest.raises(InputError, match="config key 'lora_target_modules'"):
        add_lora(model, tiny_config(lora_target_modules=["no_such_proj"]))


def test_pad_token_falls_back_to_eos_without_unk():
    class Tok:
        pad_token, unk_token, eos_token = None, None, "</s>"

    assert fix_pad_token(Tok()).pad_token == "</s>"


def test_cpu_computes_in_float32():
    assert resolve_compute_dtype(Config(), torch.device("cpu")) == torch.float32
    assert resolve_compute_dtype(Config(compute_dtype="float16"), torch.device("cpu")) == torch.float16


def test_tiny_tokenizer_reads_the_configured_data_dir(tmp_path):
    """Tiny models train their tokenizer on the course text in data_dir; without it, one clear line."""
    with pytest.raises(InputError, match="Tang_training_data.json: file not found"):
        tiny.build_tokenizer(4700, data_dir=str(tmp_path))
