"""Loading the tokenizer and the model: NF4 on CUDA (bitsandbytes), float32 on CPU, then the k-bit
preparation and the LoRA adapters the config asks for."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from tangpoem.builtin import is_builtin, load_builtin_model, load_builtin_tokenizer
from tangpoem.config import BREEZE, TAIDE, Config
from tangpoem.console import no_weight_loading_bar
from tangpoem.errors import InputError, say, setting
from tangpoem.runtime import resolve_compute_dtype, resolve_device

# What we know about the course's two models; any other causal-LM id or local path works too.
PRESETS: dict[str, dict[str, Any]] = {
    BREEZE: {"architecture": "mistral", "gated": False},
    TAIDE: {"architecture": "llama", "gated": True},  # needs a hub login (never put the token in a notebook)
}


# ----------------------------------------------------------------------------- tokenizer

def fix_pad_token(tokenizer: Any) -> Any:
    """Llama/Mistral tokenizers ship without a pad token. Pad with <unk> where there is one, not with
    EOS: our labels come from lengths, not pad ids, but an EOS pad would still confuse readers."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_tokenizer(cfg: Config) -> Any:
    name = cfg.model_name_or_path
    if is_builtin(name):
        tokenizer = load_builtin_tokenizer(name, cfg.data_dir)
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


# ----------------------------------------------------------------------------- the base model

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
    name = cfg.model_name_or_path
    no_weight_loading_bar()
    if cfg.load_in_4bit and device.type != "cuda":
        raise InputError(f"config key 'load_in_4bit' = True: 4-bit NF4 needs a CUDA GPU; "
                         f"set {setting('load_in_4bit', False)} to run in float32 on the CPU")
    if is_builtin(name):
        if cfg.load_in_4bit:
            raise InputError(f"config key 'load_in_4bit' = True: the built-in model {name} is not quantizable; "
                             f"set {setting('load_in_4bit', False)}")
        model = load_builtin_model(name, load_builtin_tokenizer(name, cfg.data_dir))
        model = model.to(device=device, dtype=dtype if device.type == "cuda" else torch.float32)
    else:
        from transformers import AutoModelForCausalLM

        if device.type == "cpu":
            refuse_too_big_for_cpu(cfg)
        # use_kernels=False: transformers 5.2x otherwise swaps layers' forwards for kernels fetched from the Hub
        # (the `kernels` package), again at every train()/eval(), which undoes tangpoem's fused forwards; the
        # path tangpoem measures and tests is torch's and its own.
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code, "use_kernels": False}
        if cfg.load_in_4bit:
            kwargs["quantization_config"] = quantization_config(dtype)
            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
        with _loading(name):
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        if not cfg.load_in_4bit:
            model = model.to(device)
    model.config.use_cache = False  # training default; generation turns the cache back on
    return model


def refuse_too_big_for_cpu(cfg: Config, available_bytes: int | None = None) -> None:
    """A 7B model in float32 needs ~30 GB, where a Colab CPU runtime has ~12 GB: say so before loading,
    instead of letting the kernel die. The size comes from the model's config alone (no weights read)."""
    import psutil
    from transformers import AutoConfig, AutoModelForCausalLM

    with _loading(cfg.model_name_or_path):
        config = AutoConfig.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        parameters = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code).num_parameters()
    needed = parameters * 4  # float32
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    if needed > 0.9 * available:
        raise InputError(
            f"config key 'model_name_or_path' = {cfg.model_name_or_path!r}: {parameters / 1e9:.1f} B parameters need "
            f"~{needed / 2**30:.0f} GiB in float32 on a CPU, and this machine has {available / 2**30:.0f} GiB free; "
            f"use a GPU runtime (Colab: Runtime > Change runtime type > T4 GPU), or the CPU model: "
            + say("`--config nano-cpu`", '`config_file = "nano-cpu"`'))


# ----------------------------------------------------------------------------- training preparation and LoRA

def _checkpointing_on(model: torch.nn.Module, layers: int | None) -> None:
    # non-reentrant: works with frozen inputs and under DDP. transformers 5.2x renamed gradient checkpointing to
    # activation checkpointing (the old name warns until v6); 5.17 has only the old name.
    from transformers.modeling_layers import GradientCheckpointingLayer

    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # so checkpointed blocks see an input that needs grad
    if layers is not None:  # checkpointed_layers: the last layers keep their activations (the backward frees them first)
        for layer in [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)][layers:]:
            layer.gradient_checkpointing = False


def prepare_for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """The homework's k-bit preparation for a 4-bit model (or, with kbit_fp32_upcast off, everything frozen
    in its own dtype), and gradient checkpointing when the config asks for it."""
    from peft import prepare_model_for_kbit_training

    quantized = getattr(model, "is_loaded_in_4bit", False)
    if quantized and cfg.kbit_fp32_upcast:
        # Current peft API (the homework's prepare_model_for_int8_training is gone): freezes every weight and
        # casts the norms and embeddings to fp32 (stable in fp16).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        for param in model.parameters():
            param.requires_grad_(False)
    if cfg.gradient_checkpointing:
        _checkpointing_on(model, cfg.checkpointed_layers)  # what peft would do with use_reentrant=False, by the current API name
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
    """A saved LoRA adapter on the base model (peft's PeftModel), for generation or to train on."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def load_model(cfg: Config) -> tuple[torch.nn.Module, Any]:
    """Tokenizer and base model with fresh LoRA adapters, the plain path (train.prepare adds the levers' set-up)."""
    return add_lora(load_base_model(cfg), cfg), load_tokenizer(cfg)
