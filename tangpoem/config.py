"""One config object for every step: defaults here, a YAML file on top, then `--set key=value`.

The defaults are the homework's (Breeze-7B on a Colab T4). Keys are flat so that the same names
work as YAML keys, `--set` overrides and papermill parameters.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tangpoem.errors import InputError

BREEZE = "MediaTek-Research/Breeze-7B-Instruct-v0_1"
TAIDE = "taide/TAIDE-LX-7B-Chat"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the checkout's configs/*.yaml


@dataclass
class Config:
    # --- model ---
    model_name_or_path: str = BREEZE  # hub id, local path, or a built-in name (tiny-mistral, tiny-llama)
    trust_remote_code: bool = False  # only when a model's card asks for it
    device: str = "auto"  # auto | cuda | cpu
    load_in_4bit: bool = True  # NF4 with double quantization (bitsandbytes, CUDA only)
    compute_dtype: str = "auto"  # auto (bf16 where supported, else fp16; fp32 on CPU) | bfloat16 | float16 | float32
    prompt_mode: str = "course"  # course ([INST] <<SYS>> block of the homework) | chat_template (the tokenizer's)
    # --- data ---
    data_dir: str | None = None  # default: $TANGPOEM_DATA_DIR, else data/GenAI-Hw5
    num_train_data: int = 1040  # the first N training rows, as in the homework (max 5001)
    cutoff_len: int = 256  # tokens per training row; the answer is cut, never the prompt
    # --- LoRA ---
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # --- training ---
    output_dir: str = "outputs/run"  # checkpoints, loss history and results land here
    seed: int = 42
    num_epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); None = whole epochs
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # HF Trainer's default, which the homework used
    micro_batch_size: int = 4  # rows per forward pass
    batch_size: int = 16  # rows per optimizer step (accumulated over micro-batches)
    warmup_steps: int = 50
    logging_steps: int = 20
    save_steps: int = 65
    save_total_limit: int = 3
    gradient_checkpointing: bool = True  # saves memory on a T4; costs ~30% speed
    padding_free: bool = False  # pack each micro-batch into one sequence (no pad tokens); faster on big GPUs
    answer_logits_only: bool = False  # padding_free only: lm_head and loss only where a label is (~30% of tokens)
    varlen_attention: bool = False  # padding_free only, sm80+ GPUs: attention within each packed row (FlashAttention varlen)
    cuda_graphs: bool = False  # one GPU; varlen_attention + answer_logits_only, no compile/checkpointing: steps replayed as CUDA graphs
    balanced_steps: bool = False  # rows swapped between the shuffled micro-batches until each holds ~as many tokens (less padding under cuda_graphs)
    kbit_fp32_upcast: bool = True  # peft's k-bit preparation casts norms/embeddings to fp32 (safer in fp16)
    dequantize_base: bool = False  # 4-bit only: train against a copy of the NF4 weights dequantized once (~2 bytes/param)
    compile: bool = False  # torch.compile each decoder layer: fused kernels; the first steps pay for compiling
    fused_rms_norm: bool = False  # training: each RMSNorm forward as one kernel (torch.nn.functional.rms_norm), not ~8
    fused_lora: bool = False  # training: LoRA's scale and add folded into its B matmul (addmm); dense base layers only
    # --- generation ---
    checkpoint_index: int = -1  # which checkpoint to generate with (the homework's pick-by-index; -1 = last)
    generation_batch_size: int = 16
    do_sample: bool = True
    temperature: float = 0.1
    top_p: float = 0.3
    top_k: int = 50
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # > 0 forbids EOS before this many new tokens (small models may stop at once)
    stop_by_probability: bool = False  # stop when P(EOS) >= 0.5, not when EOS beats the likeliest single character
    static_cache: bool = False  # static KV cache; on a GPU the decode step is replayed as a CUDA graph (4-bit models: compiled)
    results_dir: str | None = None  # default: <output_dir>

    def __post_init__(self) -> None:
        validate(self)

    # Derived values live here, never in the config file, so they cannot disagree with their inputs.
    @property
    def gradient_accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir or self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
CHOICES = {
    "device": {"auto", "cuda", "cpu"},
    "compute_dtype": {"auto", "bfloat16", "float16", "float32"},
    "prompt_mode": {"course", "chat_template"},
}


def validate(cfg: Config) -> None:
    """Refuse values that would fail later, or silently do the wrong thing."""

    def bad(key: str, why: str) -> InputError:
        return InputError(f"config key '{key}' = {getattr(cfg, key)!r}: {why}")

    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise bad(key, f"must be one of {', '.join(sorted(allowed))}")
    if not 0 < cfg.top_p <= 1:
        raise bad("top_p", "must be in (0, 1]")
    if cfg.temperature <= 0:
        raise bad("temperature", "must be > 0 (use do_sample=false for greedy decoding)")
    if cfg.learning_rate <= 0:
        raise bad("learning_rate", "must be > 0")
    for key in ("micro_batch_size", "batch_size", "num_epochs", "cutoff_len", "lora_r", "lora_alpha",
                "logging_steps", "save_steps", "save_total_limit", "max_new_tokens", "generation_batch_size"):
        if getattr(cfg, key) < 1:
            raise bad(key, "must be >= 1")
    for key in ("warmup_steps", "top_k", "no_repeat_ngram_size", "weight_decay", "max_grad_norm", "min_new_tokens"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0")
    if not 1 <= cfg.num_train_data <= 5001:
        raise bad("num_train_data", "must be between 1 and 5001 (the course has 5001 training rows)")
    if cfg.batch_size % cfg.micro_batch_size:
        raise bad("batch_size", f"must be a multiple of micro_batch_size ({cfg.micro_batch_size})")
    if not 0 <= cfg.lora_dropout < 1:
        raise bad("lora_dropout", "must be in [0, 1)")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise bad("max_steps", "must be >= 1 or null")
    if cfg.answer_logits_only and not cfg.padding_free:
        raise bad("answer_logits_only", "needs padding_free=true (it keeps logits of one packed sequence)")
    if cfg.varlen_attention and not cfg.padding_free:
        raise bad("varlen_attention", "needs padding_free=true (it attends within each packed row)")
    if cfg.cuda_graphs and not (cfg.varlen_attention and cfg.answer_logits_only):
        raise bad("cuda_graphs", "needs varlen_attention=true and answer_logits_only=true (the captured loss is theirs)")
    if cfg.cuda_graphs and (cfg.compile or cfg.gradient_checkpointing):
        raise bad("cuda_graphs", "needs compile=false and gradient_checkpointing=false")
    if cfg.dequantize_base and not cfg.load_in_4bit:
        raise bad("dequantize_base", "needs load_in_4bit=true (it dequantizes the NF4 weights once)")
    if cfg.dequantize_base and cfg.kbit_fp32_upcast:
        raise bad("dequantize_base", "needs kbit_fp32_upcast=false (the upcast would turn the dequantized weights into fp32)")
    if cfg.fused_lora and cfg.load_in_4bit and not cfg.dequantize_base:
        raise bad("fused_lora", "needs dequantize_base=true or load_in_4bit=false (peft's 4-bit LoRA layers keep their own forward)")
    if not cfg.lora_target_modules:
        raise bad("lora_target_modules", "must name at least one module")


def _coerce(key: str, value: Any) -> Any:
    """Turn a YAML value or a `--set` string into the field's type, or say why not."""
    ftype = str(FIELDS[key].type)
    if isinstance(value, str) and ftype != "str":
        text = value
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            raise InputError(f"config key '{key}': cannot read {text!r}") from None
    if value is None:
        if "None" in ftype:
            return None
        raise InputError(f"config key '{key}': a value is required")
    if ftype.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif ftype.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ftype == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ftype.startswith("str"):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif ftype.startswith("list"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    expected = ftype.replace(" | None", " or null")
    raise InputError(f"config key '{key}': expected {expected}, got {value!r}")


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    for key, value in overrides.items():
        if key not in FIELDS:
            raise InputError(f"{source}: unknown config key '{key}'")
        values[key] = _coerce(key, value)
    return values


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """`--set key=value` strings to a dict (values are coerced later, per field)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config file path, or the name of one in the checkout's configs/ ("tiny-cpu", "breeze-colab-t4.yaml")."""
    path = Path(name)
    if path.exists():
        return path
    packaged = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if packaged.exists():
        return packaged
    raise InputError(f"{name}: config file not found")


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then overrides; validated once at the end."""
    values: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise InputError(f"{file}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{file}: expected a mapping of config keys")
        apply_overrides(values, loaded, str(file))
    apply_overrides(values, overrides or {}, "--set")
    return Config(**values)
