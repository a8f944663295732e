"""Model loading on the CPU: LoRA from the config, the pad token, and clear errors."""

import pytest
import torch

from tangpoem import tiny
from tangpoem.config import Config
from tangpoem.errors import InputError
from tangpoem.model import add_lora, fix_pad_token, load_model
from tangpoem.runtime import resolve_compute_dtype


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


def test_dequantized_base_computes_what_the_4bit_layers_do():
    """dequantize_base swaps each Linear4bit for a Linear holding exactly the weight the 4-bit matmul
    dequantizes to. bitsandbytes quantizes on the CPU too, so this runs without a GPU."""
    from nf4_helpers import nf4_linear

    from tangpoem.fast.dense import dequantize_4bit_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 32, bias=False))
    quantized = torch.nn.Sequential(nf4_linear(model[0]), torch.nn.SiLU(), nf4_linear(model[2]))
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = quantized(x)
    assert dequantize_4bit_layers(quantized, torch.float32) == 2
    assert [type(m).__name__ for m in quantized] == ["Linear", "SiLU", "Linear"]
    assert not any(p.requires_grad for p in quantized.parameters())
    with torch.no_grad():
        assert torch.allclose(quantized(x), expected, atol=1e-6)
        assert not torch.allclose(model(x), expected, atol=1e-3)  # NF4 did round the weights


def test_dequantize_base_is_refused_where_it_cannot_work():
    with pytest.raises(InputError, match="dequantize_base.*needs load_in_4bit=true"):
        Config(dequantize_base=True, load_in_4bit=False, kbit_fp32_upcast=False)
    with pytest.raises(InputError, match="dequantize_base.*needs kbit_fp32_upcast=false"):
        Config(dequantize_base=True)


def test_lora_inputs_need_no_fp32_cast_under_autocast(tiny_config):
    """The training loop turns off peft's cast of each LoRA input to the adapters' fp32 under autocast:
    autocast runs the LoRA matmuls in the compute dtype anyway, so loss and gradients stay the same."""
    from peft.helpers import disable_input_dtype_casting

    model, tokenizer = load_model(tiny_config(model_name_or_path="tiny-mistral", lora_dropout=0.0))
    ids = torch.tensor([tokenizer("春眠不覺曉，處處聞啼鳥。").input_ids])
    torch.manual_seed(0)
    with torch.no_grad():  # nonzero B matrices, so that every adapter matrix gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    cast_loss, cast_grads = loss_and_grads()
    with disable_input_dtype_casting(model):
        plain_loss, plain_grads = loss_and_grads()
    assert all(g.abs().sum() > 0 for g in cast_grads)
    assert torch.equal(cast_loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(cast_grads, plain_grads))


def test_cjk_alone_tokenizer_gives_one_token_per_chinese_character():
    """The GPU benchmark's stand-in for Breeze's tokenizer: every Chinese character (and full-width mark) alone,
    BOS first; the plain tokenizer trained on the same text merges characters."""
    line = "春眠不覺曉，處處聞啼鳥。"
    texts = (line,) * 50 + ("the prompt in English",) * 50
    alone = tiny.build_tokenizer(300, texts=texts, cjk_alone=True)
    ids = alone(line).input_ids
    assert ids[0] == alone.bos_token_id and len(ids) == 1 + len(line)
    assert alone.convert_ids_to_tokens(ids[1:]) == ["▁春", *line[1:]] and alone.decode(ids[1:]) == line
    assert len(tiny.build_tokenizer(300, texts=texts)(line).input_ids) < 1 + len(line)


def test_a_7b_model_on_a_cpu_is_refused_before_loading(tmp_path, capsys):
    """Breeze's shape in float32 needs ~28 GiB; a Colab CPU runtime has ~12. Only config.json is read: the
    folder holds no weights at all, so a refusal that loaded them would fail differently."""
    from transformers import MistralConfig

    from tangpoem.cli import main
    from tangpoem.errors import InputError, speak_to
    from tangpoem.model import refuse_too_big_for_cpu

    MistralConfig(vocab_size=61952, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8).save_pretrained(tmp_path)
    cfg = Config(model_name_or_path=str(tmp_path), load_in_4bit=False, device="cpu")
    with pytest.raises(InputError) as e:
        refuse_too_big_for_cpu(cfg, available_bytes=12 * 2**30)
    assert str(e.value) == (f"config key 'model_name_or_path' = '{tmp_path}': 7.5 B parameters need ~28 GiB in float32 "
                            "on a CPU, and this machine has 12 GiB free; use a GPU runtime (Colab: Runtime > Change "
                            "runtime type > T4 GPU), or the CPU model: `--config nano-cpu`")
    speak_to("notebook")
    try:
        with pytest.raises(InputError, match='or the CPU model: `config_file = "nano-cpu"`$'):
            refuse_too_big_for_cpu(cfg, available_bytes=12 * 2**30)
    finally:
        speak_to("cli")
    refuse_too_big_for_cpu(cfg, available_bytes=64 * 2**30)  # a big machine may try
    # the command: this machine has 24 GiB, under the ~28 needed
    assert main(["generate", "--config", "tiny-cpu", "--set", f"model_name_or_path={tmp_path}", "--no-adapter"]) == 2
    assert capsys.readouterr().err.startswith(f"error: config key 'model_name_or_path' = '{tmp_path}': 7.5 B parameters")
