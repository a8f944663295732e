"""Loading the tokenizer and model: NF4 on CUDA (bitsandbytes), float32 on CPU, LoRA from the config."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from tangpoem.config import BREEZE, TAIDE, Config
from tangpoem.errors import InputError

# What we know about the course's two models; any other causal-LM id or local path works too.
PRESETS: dict[str, dict[str, Any]] = {
    BREEZE: {"architecture": "mistral", "gated": False},
    TAIDE: {"architecture": "llama", "gated": True},  # needs `huggingface-cli login` (never put the token in a notebook)
}


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'device' = 'cuda': no CUDA GPU is visible; use device=auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_compute_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it (Ampere+), fp16 on older GPUs such as Colab's T4, fp32 on CPU."""
    if cfg.compute_dtype != "auto":
        dtype = getattr(torch, cfg.compute_dtype)
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError("config key 'compute_dtype' = 'bfloat16': this GPU has no bf16; use float16 or auto")
        return dtype
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fix_pad_token(tokenizer: Any) -> Any:
    """Llama/Mistral tokenizers ship without a pad token. Pad with <unk> where there is one, not with
    EOS: our labels come from lengths, not pad ids, but an EOS pad would still confuse readers."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_tokenizer(cfg: Config) -> Any:
    name = cfg.model_name_or_path
    if name in _builtin_names():
        tokenizer = _builtin_tokenizer(name, cfg.data_dir)
    else:
        from transformers import AutoTokenizer

        with _loading(name):
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    return fix_pad_token(tokenizer)


@contextlib.contextmanager
def _loading(name: str) -> Iterator[None]:
    """A model id that is not on the hub or disk (or is gated) becomes one line, not a traceback."""
    try:
        yield
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"config key 'model_name_or_path' = {name!r}: cannot load it ({first})") from None


def quantization_config(compute_dtype: torch.dtype) -> Any:
    """The homework's 4-bit setup: NF4 weights, double quantization, matmuls in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # NormalFloat4: quantiles of a normal distribution, fits weight statistics
        bnb_4bit_use_double_quant=True,  # quantize the quantization constants too (~0.4 bit/param saved)
        bnb_4bit_compute_dtype=compute_dtype,  # weights are dequantized to this for each matmul
    )


def load_base_model(cfg: Config, device: torch.device | None = None) -> torch.nn.Module:
    """The base model, quantized to NF4 (double quantization) when `load_in_4bit` and on CUDA."""
    device = device or resolve_device(cfg)
    dtype = resolve_compute_dtype(cfg, device)
    if cfg.load_in_4bit and device.type != "cuda":
        raise InputError(
            "config key 'load_in_4bit' = True: 4-bit NF4 needs a CUDA GPU; set load_in_4bit=false to run in float32 on CPU"
        )
    name = cfg.model_name_or_path
    if name in _builtin_names():
        model = _builtin_model(name, cfg.data_dir)
        if cfg.load_in_4bit:
            raise InputError(f"config key 'load_in_4bit' = True: the built-in model {name} is not quantizable; set it to false")
        model = model.to(device=device, dtype=dtype if device.type == "cuda" else torch.float32)
    else:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
        if cfg.load_in_4bit:
            kwargs["quantization_config"] = quantization_config(dtype)
            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
        with _loading(name):
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        if not cfg.load_in_4bit:
            model = model.to(device)
    model.config.use_cache = False  # training default; generation turns the cache back on
    return model


def is_linear4bit(module: torch.nn.Module) -> bool:
    """A bitsandbytes Linear4bit, told by name so that CPU-only installs need not import bitsandbytes."""
    return type(module).__name__ == "Linear4bit"


def dequantized_weight(linear: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight of a Linear or a bitsandbytes Linear4bit: for NF4, exactly the values each
    4-bit matmul dequantizes to before multiplying."""
    if is_linear4bit(linear):
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(linear.weight.data, linear.weight.quant_state).to(dtype)
    return linear.weight.detach().to(dtype, copy=True)  # a copy: callers add LoRA deltas to it


def dense_linear(base: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Linear:
    """A frozen nn.Linear of `base`'s shape holding `weight` (and `base`'s bias, in weight's dtype)."""
    linear = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if base.bias is not None:
            linear.bias.copy_(base.bias.to(weight.dtype))
    return linear.requires_grad_(False)


def replace_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


@torch.no_grad()
def dequantize_4bit_layers(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace every Linear4bit with a frozen Linear holding its dequantized weight; returns how many.

    Same forward values as the 4-bit layers (which dequantize on every call), without the per-call
    dequantization: a big GPU trades ~2 bytes a parameter of memory for speed."""
    replaced = [(name, module) for name, module in model.named_modules() if is_linear4bit(module)]
    for name, module in replaced:
        replace_module(model, name, dense_linear(module, dequantized_weight(module, dtype)))
    return len(replaced)


def prepare_for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """k-bit preparation for a 4-bit model, gradient checkpointing when the config asks for it."""
    from peft import prepare_model_for_kbit_training

    checkpointing_kwargs = {"use_reentrant": False}  # works with frozen inputs and under DDP
    if not cfg.gradient_checkpointing and getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # a base model reused from an earlier run may have it on
    if cfg.dequantize_base and getattr(model, "is_loaded_in_4bit", False):
        dequantize_4bit_layers(model, resolve_compute_dtype(cfg, next(model.parameters()).device))
    if getattr(model, "is_loaded_in_4bit", False) and not cfg.kbit_fp32_upcast:
        # bf16 on sm80+ trains stably without fp32 norms; skipping the cast saves the copies it causes
        for param in model.parameters():
            param.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
            model.enable_input_require_grads()
        return model
    if getattr(model, "is_loaded_in_4bit", False):
        # Current peft API (the homework's prepare_model_for_int8_training is gone): casts norms to
        # fp32 and enables input gradients so checkpointing works with frozen 4-bit weights.
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
        model.enable_input_require_grads()
    return model


def lora_config(cfg: Config) -> Any:
    """The LoRA adapters the config asks for: rank r matrices beside each target module, scaled by alpha/r."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """Wrap the base model with fresh LoRA adapters, after preparing it for training."""
    from peft import get_peft_model

    model = prepare_for_training(model, cfg)
    try:
        return get_peft_model(model, lora_config(cfg))
    except ValueError as e:  # e.g. a target module the architecture does not have
        raise InputError(f"config key 'lora_target_modules': {e}") from None


def load_adapter(model: torch.nn.Module, adapter_dir: str, trainable: bool = False) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer (regional compilation): identical layers reuse the compiled code,
    and the norms, RoPE, SwiGLU and LoRA's small ops become a few fused kernels. Sequence lengths vary
    from step to step, so the layers are compiled for dynamic shapes."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def load_model(cfg: Config) -> tuple[torch.nn.Module, Any]:
    """Tokenizer and base model with fresh LoRA adapters, ready to train."""
    tokenizer = load_tokenizer(cfg)
    return add_lora(load_base_model(cfg), cfg), tokenizer


def _builtin_names() -> tuple[str, ...]:
    from tangpoem.nano import NANO_NAME
    from tangpoem.tiny import TINY_MODELS

    return TINY_MODELS + (NANO_NAME,)


def _builtin_tokenizer(name: str, data_dir: str | None = None) -> Any:
    """The tokenizer of a model that ships with (nano) or is built by (tiny-*) tangpoem."""
    from tangpoem import nano, tiny

    if name == nano.NANO_NAME:
        return nano.load_tokenizer()
    return tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[name], data_dir=data_dir)  # trained on the course text


def _builtin_model(name: str, data_dir: str | None = None) -> torch.nn.Module:
    from tangpoem import nano, tiny

    if name == nano.NANO_NAME:
        return nano.load_model()
    return tiny.build_model(name, _builtin_tokenizer(name, data_dir))
