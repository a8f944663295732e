"""The fused training modes compute what transformers' RMSNorm and peft's LoRA forward compute, and
hand the model back unchanged."""

from __future__ import annotations

import pytest
import torch

from tangpoem.config import Config
from tangpoem.errors import InputError
from tangpoem.fast.fused import fused_lora, fused_rms_norm
from tangpoem.model import load_model


@pytest.fixture
def tiny_lora(tiny_config, tiny_name):
    """A tiny model with LoRA (dropout on) whose B matrices are nonzero, and a packed-length input."""
    model, tokenizer = load_model(tiny_config(model_name_or_path=tiny_name, lora_dropout=0.1))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    ids = torch.tensor([tokenizer("春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。").input_ids])
    model.train()
    return model, ids


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, autocast: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks for every call
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def assert_close_training(model: torch.nn.Module, ids: torch.Tensor, mode, autocast: bool, atol: float, rtol: float) -> int:
    plain_loss, plain_grads = loss_and_grads(model, ids, autocast)
    with mode(model) as count:
        fused_loss, fused_grads = loss_and_grads(model, ids, autocast)
    assert all(g.abs().sum() > 0 for g in plain_grads)
    torch.testing.assert_close(fused_loss, plain_loss, atol=atol, rtol=rtol)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    again_loss, _ = loss_and_grads(model, ids, autocast)  # the class forwards are back
    assert torch.equal(again_loss, plain_loss)
    return count


def backward_nodes(out: torch.Tensor) -> set[str]:
    """The kinds of autograd nodes `out` was computed through."""
    names, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("mode", [fused_rms_norm, fused_lora], ids=["rms_norm", "lora"])
def test_fused_modes_train_what_the_originals_train(tiny_lora, mode):
    model, ids = tiny_lora
    layers = model.get_base_model().model.layers
    count = assert_close_training(model, ids, mode, autocast=False, atol=1e-5, rtol=1e-5)
    assert count == (2 * len(layers) + 1 if mode is fused_rms_norm else 7 * len(layers))
    # bf16 autocast: fewer roundings in the fused ops, so equal to bf16 precision only
    assert_close_training(model, ids, mode, autocast=True, atol=2e-2, rtol=2e-2)


def test_fused_rms_norm_is_one_op_in_the_activations_dtype():
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm

    norm = MistralRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.weight.copy_(norm.weight.bfloat16())  # exact in bf16 too
    x = torch.randn(2, 5, 64)
    with fused_rms_norm(norm):
        fused = norm(x)
        norm.to(torch.bfloat16)
        fused_bf16 = norm(x.bfloat16())
        norm.float()
        mixed = norm(x.bfloat16())  # fp32 weight, bf16 input: transformers' own forward (fp32 out)
    torch.testing.assert_close(fused, norm(x), atol=1e-6, rtol=1e-5)
    assert fused_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(fused_bf16.float(), norm(x), atol=3e-2, rtol=2e-2)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, norm(x.bfloat16()))


def test_fused_lora_leaves_other_cases_to_peft(tiny_lora):
    """Adapters disabled or merged: peft's own forward (the base alone, or the merged weights)."""
    model, ids = tiny_lora
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
            with fused_lora(model):
                assert torch.equal(model(input_ids=ids).logits, base)
        tuned = model(input_ids=ids).logits
        with fused_lora(model):
            torch.testing.assert_close(model(input_ids=ids).logits, tuned, atol=1e-5, rtol=1e-5)
            model.merge_adapter()
            merged = model(input_ids=ids).logits
        model.unmerge_adapter()
    torch.testing.assert_close(merged, tuned, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base, tuned)


def nf4_lora_model(tiny_config, lora_dropout: float) -> tuple[torch.nn.Module, torch.Tensor]:
    """tiny-mistral with its decoder's Linear layers in NF4 (bitsandbytes quantizes on the CPU too) and LoRA
    added as tangpoem adds it to a 4-bit model: peft's bnb Linear4bit layers, as on a T4."""
    from nf4_helpers import nf4_linear

    from tangpoem.fast.dense import replace_module
    from tangpoem.model import add_lora, load_base_model, load_tokenizer

    cfg = tiny_config(model_name_or_path="tiny-mistral", lora_dropout=lora_dropout)
    base = load_base_model(cfg)
    for name, linear in [(n, m) for n, m in base.model.layers.named_modules() if type(m) is torch.nn.Linear]:
        replace_module(base.model.layers, name, nf4_linear(linear))
    base.is_loaded_in_4bit = True  # peft then wraps the 4-bit layers in its bnb LoRA layers
    model = add_lora(base, cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    ids = torch.tensor([load_tokenizer(cfg)("春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。").input_ids])
    return model.train(), ids


def test_fused_lora_over_a_4bit_base_trains_what_peft_trains(tiny_config):
    """Over NF4 layers (breeze-colab-t4's layout) peft's LoRA layer copies the base output before adding to it;
    the fused forward adds in place, and computes the same loss and gradients (LoRA dropout on)."""
    from peft.tuners.lora.bnb import Linear4bit

    model, ids = nf4_lora_model(tiny_config, lora_dropout=0.1)
    layers = model.get_base_model().model.layers
    lora_layers = [m for m in model.modules() if type(m) is Linear4bit]
    assert len(lora_layers) == 7 * len(layers)
    assert assert_close_training(model, ids, fused_lora, autocast=False, atol=1e-5, rtol=1e-5) == len(lora_layers)
    assert_close_training(model, ids, fused_lora, autocast=True, atol=2e-2, rtol=2e-2)  # as the T4 trains: under autocast
    x = torch.randn(1, 5, lora_layers[0].in_features, requires_grad=True)
    with fused_lora(model):
        out = lora_layers[0](x)
    names = backward_nodes(out)
    assert "AddmmBackward0" in names and "CloneBackward0" not in names, names  # no copy of the base output


def test_fused_lora_works_over_dense_and_4bit_bases():
    Config(fused_lora=True)  # 4-bit (the T4 configs)
    Config(fused_lora=True, load_in_4bit=False)
    Config(fused_lora=True, dequantize_base=True, kbit_fp32_upcast=False)


def test_fused_lora_adds_in_place_without_a_copy(tiny_lora):
    """The LoRA sum lands in the base output itself (AddmmBackward), not through a view that autograd
    would have to copy back (CopySlices)."""
    model, ids = tiny_lora
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    x = torch.randn(1, 7, layer.in_features, requires_grad=True)
    with fused_lora(model):
        out = layer(x)
    names = backward_nodes(out)
    assert "AddmmBackward0" in names and not any(name.startswith("CopySlices") for name in names), names


def test_fused_lora_leaves_a_lora_bias_to_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 6)), LoraConfig(r=2, target_modules=["0"], lora_bias=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.eval()
    x = torch.randn(3, 8)
    with fused_lora(model) as count:
        fused = model(x)
    assert count == 1 and torch.equal(fused, model(x))


def test_fused_modes_nest_and_keep_forwards_set_on_the_instance(tiny_lora):
    """An enclosing block's patch, or a hook's instance forward (accelerate's), is neither replaced nor
    removed by a block inside it; each block removes only what it set."""
    model, ids = tiny_lora
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    hooked = norms[0]
    hooked.forward = hook = lambda hidden_states: type(hooked).forward(hooked, hidden_states)  # noqa: E731
    with fused_rms_norm(model) as outer:
        assert outer == len(norms) - 1 and hooked.forward is hook
        with fused_rms_norm(model) as inner:
            assert inner == 0
        assert all("forward" in m.__dict__ for m in norms)  # the outer block's patches survive the inner exit
    assert hooked.forward is hook and not any("forward" in m.__dict__ for m in norms[1:])


def test_train_and_eval_keep_the_fused_forwards(tiny_config, course_dir, tmp_path):
    """transformers 5.2x swaps the layers of a model loaded from a folder or the Hub for Hub kernels by default,
    and again at every train() and eval(), which removed the fused forwards (a training run then failed as its
    modes ended): tangpoem loads models with use_kernels=False."""
    from tangpoem.builtin import load_builtin_model, load_builtin_tokenizer

    tokenizer = load_builtin_tokenizer("tiny-mistral", str(course_dir))
    load_builtin_model("tiny-mistral", tokenizer).save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    model, _ = load_model(tiny_config(model_name_or_path=str(tmp_path / "saved")))
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    with fused_rms_norm(model) as count:
        model.eval()
        model.train()
        assert count == len(norms) and all("forward" in m.__dict__ for m in norms)
    assert not any("forward" in m.__dict__ for m in norms)


def test_fused_rms_norm_leaves_other_norms_alone():
    class GatedRMSNorm(torch.nn.Module):  # a weight and an epsilon, but another computation (and argument)
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.ones(4)), 1e-6

        def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
            return hidden_states if gate is None else hidden_states * gate

    with fused_rms_norm(torch.nn.Sequential(GatedRMSNorm())) as count:
        assert count == 0


def test_a_fused_mode_with_nothing_to_fuse_is_a_config_error(tiny_config, monkeypatch):
    import tangpoem.fast.fused as fused
    from tangpoem.train import train

    monkeypatch.setattr(fused, "_is_rms_norm", lambda module: False)  # as for a model whose norms are of another kind
    with pytest.raises(InputError, match="fused_rms_norm.*no RMSNorm layers"):
        train(tiny_config(max_steps=1, fused_rms_norm=True))
