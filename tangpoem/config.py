"""One config object for every step, built by one rule: the defaults below, then a config file (which may
name a `base:` file and state only its differences), then explicit overrides (`--set key=value`, papermill's
`-p`, a notebook's knobs). An override of None leaves the value below it.

The defaults are the homework's (Breeze-7B on a Colab T4). Keys are flat, so that the same names work as
YAML keys, `--set` overrides and notebook parameters; each key's help text lives once, on its field.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tangpoem.errors import InputError

BREEZE = "MediaTek-Research/Breeze-7B-Instruct-v0_1"
TAIDE = "taide/TAIDE-LX-7B-Chat"
SECTIONS = ("model", "data", "lora", "training", "checkpoints", "evaluation", "tracking", "generation", "levers")
SCORES = ("char_f1", "form", "pingze", "rhyme")  # generation scores on the validation rows, higher is better
TRACKERS = ("none", "tensorboard", "trackio", "wandb")


def knob(default: Any, help: str, section: str) -> Any:
    """A config field: its default, its help text (parameters cells, README and --help take it from here)."""
    metadata = {"help": help, "section": section}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    # --- model
    model_name_or_path: str = knob(BREEZE, "hub id, local path, or a built-in model (tangpoem-nano, tiny-mistral, tiny-llama)", "model")
    trust_remote_code: bool = knob(False, "run code from the model's repository; only when its card asks for it", "model")
    device: str = knob("auto", "auto | cuda | cpu", "model")
    load_in_4bit: bool = knob(True, "NF4 weights with double quantization (bitsandbytes, CUDA only)", "model")
    compute_dtype: str = knob("auto", "auto (bf16 on compute capability 8.0+, fp16 on older GPUs such as the T4, fp32 on CPU) | bfloat16 | float16 | float32", "model")
    prompt_mode: str = knob("course", "course (the homework's [INST] <<SYS>> prompt) | chat_template (the tokenizer's)", "model")
    # --- data
    data_dir: str | None = knob(None, "the course files; None: $TANGPOEM_DATA_DIR, else data/GenAI-Hw5", "data")
    num_train_data: int = knob(1040, "the first N of the 5001 course rows, as in the homework", "data")
    cutoff_len: int = knob(256, "tokens per training row; the answer is cut, never the prompt", "data")
    # --- LoRA
    lora_r: int = knob(8, "rank of the LoRA matrices A (r x in) and B (out x r)", "lora")
    lora_alpha: int = knob(16, "the LoRA update B·A is scaled by alpha / r", "lora")
    lora_dropout: float = knob(0.05, "dropout on the adapters' input while training", "lora")
    lora_target_modules: list[str] = knob(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                          "the linear layers that get adapters", "lora")
    # --- training
    output_dir: str = knob("outputs/run", "checkpoints, loss history, results and figures land here", "training")
    seed: int = knob(42, "the same seed gives the same shuffling, LoRA initialisation and samples", "training")
    num_epochs: int = knob(1, "passes over the training rows", "training")
    max_steps: int | None = knob(None, "stop after this many optimizer steps (quick runs); None: whole epochs", "training")
    learning_rate: float = knob(3e-4, "peak learning rate (linear warmup, then linear decay to 0)", "training")
    weight_decay: float = knob(0.0, "AdamW's weight decay", "training")
    max_grad_norm: float = knob(1.0, "gradients are clipped to this norm (HF Trainer's default, as the homework); 0: no clipping", "training")
    micro_batch_size: int = knob(4, "rows per forward pass (GPU memory)", "training")
    batch_size: int = knob(16, "rows per optimizer step; gradients accumulate over batch_size / micro_batch_size passes", "training")
    warmup_steps: int = knob(50, "steps of linear learning-rate warmup", "training")
    logging_steps: int = knob(20, "log the loss every N steps", "training")
    gradient_checkpointing: bool = knob(True, "recompute activations in the backward pass: less memory (needed on a T4), ~30% slower", "training")
    max_bad_steps: int = knob(10, "stop after N steps in a row with an inf/nan loss or an update the fp16 loss scaler skipped (0: never)", "training")
    # --- checkpoints
    save_steps: int = knob(65, "save a checkpoint every N optimizer steps (and at the end)", "checkpoints")
    save_total_limit: int = knob(3, "keep the newest N checkpoints", "checkpoints")
    checkpoint_index: int | str = knob(-1, "which checkpoint generation uses: 0 the first, -1 the last, best (by best_metric)", "checkpoints")
    # --- evaluation: validation during training (tangpoem.evaluate)
    val_size: int | float = knob(0, "validation rows (course rows after num_train_data, picked by seed), or a fraction of num_train_data; 0: none (the homework)", "evaluation")
    best_metric: str = knob("val_loss", "what picks the best checkpoint: val_loss (lower is better), char_f1, form, pingze, rhyme, or a mean such as char_f1+pingze", "evaluation")
    early_stopping_patience: int = knob(0, "stop after N evaluations in a row without best_metric improving (0: never)", "evaluation")
    early_stopping_threshold: float = knob(0.0, "the least change of best_metric that counts as improving", "evaluation")
    # --- tracking
    report_to: list[str] = knob(["none"], "none | tensorboard | trackio | wandb, or several: loss, learning rate, memory, eval figures, sample poems", "tracking")
    # --- generation
    generation_batch_size: int = knob(16, "poems generated together", "generation")
    do_sample: bool = knob(True, "sample; False: greedy, always the most likely token", "generation")
    temperature: float = knob(0.1, "logits are divided by T before sampling: < 1 sharpens, > 1 flattens", "generation")
    top_p: float = knob(0.3, "sample among the fewest tokens whose probabilities add up to p", "generation")
    top_k: int = knob(50, "sample among the k most likely tokens (0: off)", "generation")
    no_repeat_ngram_size: int = knob(3, "never repeat any N tokens in a row (0: off)", "generation")
    max_new_tokens: int = knob(128, "the longest answer, in tokens", "generation")
    min_new_tokens: int = knob(0, "> 0 forbids EOS before this many new tokens (small models may stop at once)", "generation")
    stop_by_probability: bool = knob(False, "stop when P(EOS) >= 0.5, not when EOS beats the likeliest single character", "generation")
    results_dir: str | None = knob(None, "where results.txt and results.json go; None: output_dir", "generation")
    # --- levers: how the same training and generation run faster on bigger GPUs (tangpoem.fast); none changes what is learned
    padding_free: bool = knob(False, "pack each micro-batch's rows end to end: no pad tokens", "levers")
    answer_logits_only: bool = knob(False, "padding_free only: lm_head and loss only where a label is", "levers")
    varlen_attention: bool = knob(False, "padding_free only, compute capability 8.0+: attention within each packed row (FlashAttention varlen)", "levers")
    cuda_graphs: bool = knob(False, "needs varlen_attention and answer_logits_only: each micro-batch replayed as CUDA graphs (under torchrun, each rank's own)", "levers")
    balanced_steps: bool = knob(False, "rows swapped between the shuffled micro-batches until each holds ~as many tokens (less padding under cuda_graphs)", "levers")
    deferred_reads: bool = knob(False, "read each step's loss once the next step is queued, so the GPU is never idle while the CPU logs", "levers")
    kbit_fp32_upcast: bool = knob(True, "peft's k-bit preparation casts norms and embeddings to fp32 (the homework's; safer in fp16)", "levers")
    dequantize_base: bool = knob(False, "4-bit only: train against the NF4 weights dequantized once (~2 bytes a parameter)", "levers")
    compile: bool = knob(False, "torch.compile each decoder layer: fused kernels; the first steps pay for compiling", "levers")
    fused_rms_norm: bool = knob(False, "each RMSNorm forward as one kernel (torch.nn.functional.rms_norm)", "levers")
    fused_lora: bool = knob(False, "LoRA's scale and add folded into its B matmul (addmm), on the base output itself", "levers")
    checkpointed_layers: int | None = knob(None, "with gradient_checkpointing on: only the first N decoder layers recompute, the others keep their activations (faster, more memory); None: all", "levers")
    static_cache: bool = knob(False, "generation: a static KV cache; on a GPU each new token's step (forward, rules, choice) replayed as one CUDA graph", "levers")
    dense_generation: bool = knob(False, "generation on a GPU: the NF4 weights dequantized once (~2 bytes a parameter) with the adapter merged into them, as export --merged: faster, the same tokens up to rounding", "levers")

    def __post_init__(self) -> None:
        validate(self)

    # Derived values live here, never in a config file, so they cannot disagree with their inputs.
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


def keys_of(section: str) -> list[str]:
    return [name for name, f in FIELDS.items() if f.metadata["section"] == section]


def _refuse(cfg: Config, key: str, why: str) -> InputError:
    return InputError(f"config key '{key}' = {getattr(cfg, key)!r}: {why}")


def validate(cfg: Config) -> None:
    """Refuse values that would fail later, or silently do the wrong thing."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise _refuse(cfg, key, f"must be one of {', '.join(sorted(allowed))}")
    for key, f in FIELDS.items():
        if str(f.type) == "float" and not math.isfinite(getattr(cfg, key)):
            raise _refuse(cfg, key, "must be a finite number")
    if not 0 < cfg.top_p <= 1:
        raise _refuse(cfg, "top_p", "must be in (0, 1]")
    if cfg.temperature <= 0:
        raise _refuse(cfg, "temperature", "must be > 0 (use do_sample=false for greedy decoding)")
    if cfg.learning_rate <= 0:
        raise _refuse(cfg, "learning_rate", "must be > 0")
    for key in ("micro_batch_size", "batch_size", "num_epochs", "cutoff_len", "lora_r", "lora_alpha",
                "logging_steps", "save_steps", "save_total_limit", "max_new_tokens", "generation_batch_size"):
        if getattr(cfg, key) < 1:
            raise _refuse(cfg, key, "must be >= 1")
    for key in ("warmup_steps", "top_k", "no_repeat_ngram_size", "weight_decay", "max_grad_norm", "min_new_tokens",
                "max_bad_steps", "early_stopping_patience", "early_stopping_threshold"):
        if getattr(cfg, key) < 0:
            raise _refuse(cfg, key, "must be >= 0")
    if not 0 <= cfg.seed < 2**32:
        raise _refuse(cfg, "seed", "must be between 0 and 2**32 - 1 (numpy's range)")
    if not 1 <= cfg.num_train_data <= 5001:
        raise _refuse(cfg, "num_train_data", "must be between 1 and 5001 (the course has 5001 training rows)")
    if cfg.batch_size % cfg.micro_batch_size:
        raise _refuse(cfg, "batch_size", f"must be a multiple of micro_batch_size ({cfg.micro_batch_size})")
    if not 0 <= cfg.lora_dropout < 1:
        raise _refuse(cfg, "lora_dropout", "must be in [0, 1)")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise _refuse(cfg, "max_steps", "must be >= 1 or null")
    if not cfg.lora_target_modules:
        raise _refuse(cfg, "lora_target_modules", "must name at least one module")
    if not (isinstance(cfg.checkpoint_index, int) or cfg.checkpoint_index == "best"):
        raise _refuse(cfg, "checkpoint_index", "must be a whole number (0 the first, -1 the last) or best")
    validate_evaluation(cfg)
    validate_levers(cfg)


def validation_rows(cfg: Config) -> int:
    """How many validation rows `val_size` asks for (a fraction is of num_train_data, at least 1)."""
    if isinstance(cfg.val_size, float) and cfg.val_size < 1:
        return max(1, round(cfg.val_size * cfg.num_train_data)) if cfg.val_size > 0 else 0
    return int(cfg.val_size)


def metric_parts(best_metric: str) -> list[str]:
    """`best_metric` as the figures it averages: ["val_loss"], or scores joined by "+"."""
    return [part.strip() for part in best_metric.split("+")]


def validate_evaluation(cfg: Config) -> None:
    """val_size, best_metric, early stopping and report_to."""
    size = cfg.val_size
    if isinstance(size, bool) or not math.isfinite(size) or size < 0 or (isinstance(size, float) and size >= 1 and not size.is_integer()):
        raise _refuse(cfg, "val_size", "must be a row count (0, 64, ...) or a fraction of num_train_data between 0 and 1")
    if validation_rows(cfg) > 5001 - cfg.num_train_data:
        raise _refuse(cfg, "val_size", f"asks for {validation_rows(cfg)} rows; the course has {5001 - cfg.num_train_data} "
                                        f"after the first num_train_data ({cfg.num_train_data})")
    parts = metric_parts(cfg.best_metric)
    if parts != ["val_loss"] and not (parts and all(p in SCORES for p in parts)):
        raise _refuse(cfg, "best_metric", f"must be val_loss, or one or more of {', '.join(SCORES)} joined by + (their mean)")
    if cfg.early_stopping_patience and not validation_rows(cfg):
        raise _refuse(cfg, "early_stopping_patience", "needs validation rows: set val_size (e.g. 64)")
    unknown = [name for name in cfg.report_to if name not in TRACKERS]
    if unknown or not cfg.report_to or ("none" in cfg.report_to and len(cfg.report_to) > 1):
        raise _refuse(cfg, "report_to", f"must be none, or one or more of {', '.join(TRACKERS[1:])}")


def validate_levers(cfg: Config) -> None:
    """The levers' own rules: which need which, and which exclude each other."""
    needs = [
        ("answer_logits_only", "padding_free", True, "it keeps logits of one packed sequence"),
        ("varlen_attention", "padding_free", True, "it attends within each packed row"),
        ("cuda_graphs", "varlen_attention", True, "the captured loss is varlen's"),
        ("cuda_graphs", "answer_logits_only", True, "the captured loss keeps answer logits only"),
        ("cuda_graphs", "compile", False, "a captured step cannot compile"),
        ("cuda_graphs", "gradient_checkpointing", False, "a captured step cannot recompute"),
        ("dequantize_base", "load_in_4bit", True, "it dequantizes the NF4 weights once"),
        ("dequantize_base", "kbit_fp32_upcast", False, "the upcast would turn the dequantized weights into fp32"),
    ]
    for lever, other, wanted, why in needs:
        if getattr(cfg, lever) and getattr(cfg, other) != wanted:
            raise _refuse(cfg, lever, f"needs {other}={str(wanted).lower()} ({why})")
    if cfg.checkpointed_layers is not None and cfg.checkpointed_layers < 0:
        raise _refuse(cfg, "checkpointed_layers", "must be >= 0 (a count of decoder layers; None: every layer)")


# ----------------------------------------------------------------------------- reading values

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
    elif ftype == "int | float":  # a count or a fraction
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif ftype == "int | str":  # an index or a name (checkpoint_index: -1, best)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
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


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """`--set key=value` strings to a dict (values are coerced later, per field)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def resolve_config_path(name: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """A config file: a path (relative to `relative_to` for a `base:`), or the name of a shipped one ("nano-cpu")."""
    from tangpoem.resources import configs_dir

    path = Path(name)
    for candidate in ([relative_to / path] if relative_to and not path.is_absolute() else []) + [path]:
        if candidate.is_file():
            return candidate
        if candidate.exists():
            raise InputError(f"{candidate}: is a directory, not a config file")
    shipped = configs_dir() / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    raise InputError(f"{name}: config file not found (a path, or one of: {', '.join(shipped_config_names())})")


def shipped_config_names() -> list[str]:
    from tangpoem.resources import configs_dir

    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise InputError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{file}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise InputError(f"{file}: cannot read it ({e.strerror})") from None
    if not isinstance(loaded, dict):
        raise InputError(f"{file}: expected a mapping of config keys")
    return loaded


def file_layers(path: str | os.PathLike, relative_to: Path | None = None, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """(source, values) of a config file and its `base:` chain, the furthest base first."""
    file = resolve_config_path(path, relative_to).resolve()
    if file in seen:
        raise InputError(f"{file}: 'base:' chain returns to this file ({' -> '.join(p.name for p in seen)})")
    values = _read_yaml(file)
    base = values.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise InputError(f"{file}: 'base:' must name a config file, got {base!r}")
    layers = file_layers(base, file.parent, (*seen, file)) if base else []
    return [*layers, (str(file), values)]


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                source: str = "--set") -> Config:
    """Defaults, then the config file (its `base:` first, if any), then `overrides` (from `source`; a value of
    None is no override). Validated once, at the end. `config_sources(cfg)` says where each value came from."""
    layers = file_layers(path) if path is not None else []
    layers.append((source, {k: v for k, v in (overrides or {}).items() if v is not None}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise InputError(f"{origin}: unknown config key '{key}'")
            values[key] = _coerce(key, value)
            sources[key] = origin
    cfg = Config(**values)
    cfg._sources = sources  # attributes, not fields: to_dict() and == see the values only
    cfg._layers = [origin for origin, layer in layers if layer]
    return cfg


def config_sources(cfg: Config) -> dict[str, str]:
    """For each key set by a file or an override: where it came from (empty for a Config built directly)."""
    return dict(getattr(cfg, "_sources", {}))


def describe(cfg: Config) -> str:
    """One line: the layers the config came from, in order, with the values each override set, e.g.
    `config: defaults < configs/nano-cpu.yaml < --set max_steps=2`."""
    parts = ["defaults"]
    for origin in getattr(cfg, "_layers", []):
        if origin.endswith((".yaml", ".yml")):
            path = Path(origin)
            parts.append(str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else origin)
        else:
            items = [f"{key}={getattr(cfg, key)!r}" for key, source in config_sources(cfg).items() if source == origin]
            parts.append(f"{origin} {', '.join(items)}")
    return "config: " + " < ".join(parts)


def effective_yaml(cfg: Config) -> str:
    """The whole effective config as YAML, with where each non-default value came from as a comment."""
    sources = config_sources(cfg)
    lines = ["# the effective config of this run: defaults, then the config file(s), then overrides"]
    for section in SECTIONS:
        lines.append(f"# --- {section}")
        for key in keys_of(section):
            value = yaml.safe_dump({key: getattr(cfg, key)}, allow_unicode=True, default_flow_style=True,
                                   width=1 << 16).strip().strip("{}")
            lines.append(value + (f"  # from {sources[key]}" if key in sources else ""))
    return "\n".join(lines) + "\n"
