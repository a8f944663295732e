"""The lessons' cell helpers: what the teaching notebooks call, so that each cell is a few lines.

Nothing here reads a notebook's globals: the notebooks pass their parameters in explicitly.
Tables are returned as `Table` objects, which Jupyter shows as Markdown and `print` shows as text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from tangpoem.config import Config, load_config
from tangpoem.errors import InputError, speak_to
from tangpoem.io import atomic_write_json, display_path
from tangpoem.runtime import has_native_bf16
from tangpoem.table import Table

DEMO_BEFORE_FILE = "demo_before.json"  # 03 writes the base model's demo poems; 06 shows them beside the tuned ones
FIGURES_DIR = "figures"
DRIVE_ROOT = "/content/drive/MyDrive/tangpoem"
HUB_CACHE_DIR = "hf-hub-cache"  # under DRIVE_ROOT, with hub_cache_on_drive


# ----------------------------------------------------------------------------- parameters and environment

def config_from_parameters(config_file: str | None, knobs: Mapping[str, Any], mount_drive: bool | None = None,
                           for_this_machine: bool = False, hub_cache_on_drive: bool = False) -> Config:
    """The notebook's Config, by the one rule: the defaults, the config file (None: the homework's defaults),
    then the knobs that are set (a knob left at None keeps the file's value). In Colab (`mount_drive` None
    means "in Colab"), a relative output_dir moves under Google Drive; with `hub_cache_on_drive`, so do the
    downloaded models. With `for_this_machine`, a CPU runtime loads without 4-bit (bitsandbytes needs a GPU)."""
    speak_to("notebook")  # messages name notebook knobs (`resume = True`), not CLI flags
    if hub_cache_on_drive:
        print(hub_cache_to_drive())
    knobs = dict(knobs)
    if for_this_machine and not torch.cuda.is_available() and knobs.get("load_in_4bit") is None:
        if load_config(config_file, knobs, source="notebook").load_in_4bit:
            print("no CUDA GPU: loading without 4-bit (load_in_4bit = False)")
            knobs["load_in_4bit"] = False
    cfg = load_config(config_file, knobs, source="notebook")
    drive_dir = on_drive(cfg.output_dir, in_colab() if mount_drive is None else mount_drive)
    return cfg if drive_dir == cfg.output_dir else load_config(config_file, {**knobs, "output_dir": drive_dir}, source="notebook")


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def _mount_drive() -> None:
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount("/content/drive")


def on_drive(output_dir: str, mount_drive: bool) -> str:
    """Where outputs go: with `mount_drive` in Colab, a relative output_dir moves under Google Drive
    (mounted here), so checkpoints survive a disconnect and the next notebook's runtime finds them."""
    if not (mount_drive and in_colab()):
        return output_dir
    _mount_drive()
    return output_dir if Path(output_dir).is_absolute() else str(Path(DRIVE_ROOT) / output_dir)


def hub_cache_to_drive() -> str:
    """Keep the Hugging Face hub cache (downloaded models) on Google Drive: about 15 GB of Drive for Breeze and
    slower loads (Drive reads slower than the runtime's disk), but no 15 GB download in each new runtime. Must
    run before anything downloads: the hub reads HF_HUB_CACHE when it is imported."""
    if not in_colab():
        return "hub_cache_on_drive: only in Colab; the hub cache stays where it is"
    _mount_drive()
    cache = str(Path(DRIVE_ROOT) / HUB_CACHE_DIR)
    os.environ["HF_HUB_CACHE"] = cache
    if "huggingface_hub" in sys.modules:
        return (f"hub_cache_on_drive: HF_HUB_CACHE={cache} takes effect after Runtime > Restart session "
                "(the hub was imported already)")
    return f"hub cache on Drive: {cache} (models downloaded once, kept across runtimes)"


def describe_device() -> str:
    """What this runtime can do: GPU name and memory, bf16, bitsandbytes; or CPU only."""
    lines = [f"python {platform.python_version()}, torch {torch.__version__}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}, "
                     f"bf16 {'yes' if has_native_bf16(torch.device('cuda', 0)) else 'no (fp16 is used)'}")
        try:
            import bitsandbytes  # noqa: F401

            lines.append("bitsandbytes: installed (4-bit NF4 available)")
        except ImportError:
            lines.append("bitsandbytes: missing (pip install bitsandbytes for 4-bit NF4)")
    else:
        lines.append("no CUDA GPU: CPU only. 4-bit NF4 needs a GPU; use a CPU config "
                     "(configs/nano-cpu.yaml) or, in Colab, Runtime > Change runtime type > T4 GPU")
    return "\n".join(lines)


def prepare_data(data_dir: str | None) -> str:
    """Use the course files where they are, or download them (pinned commit, SHA-256 checked)."""
    from tangpoem import data

    data.fetch(data_dir, keep_existing=True)  # only what is missing: never overwrite files that are there
    counts = data.check(data_dir)
    return (f"{data.resolve_data_dir(data_dir)}: {counts['train']} training rows, "
            f"{counts['test']} test rows, {counts['gt']} ground-truth lines")


def hub_login(model_name_or_path: str) -> str:
    """Log in to the Hugging Face hub when the model is gated (TAIDE). The token is never printed,
    returned or written to the notebook: it comes from $HF_TOKEN, a Colab secret, or a hidden prompt."""
    from tangpoem.model import PRESETS

    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN is set in the environment; the hub uses it (the token is not shown)"
    if not PRESETS.get(model_name_or_path, {}).get("gated"):
        return f"{model_name_or_path}: not gated, no login needed"
    if in_colab():
        try:
            from google.colab import userdata  # type: ignore[import-not-found]

            os.environ["HF_TOKEN"] = userdata.get("HF_TOKEN")  # Colab's 🔑 Secrets panel
            return "HF_TOKEN taken from Colab Secrets (the token is not shown)"
        except Exception:  # no such secret, or access not granted: fall through to the prompt
            pass
    import getpass

    try:
        token = getpass.getpass("Hugging Face token (hidden): ")
    except Exception:  # headless (papermill): no stdin to ask on
        return f"{model_name_or_path} is gated: set HF_TOKEN in the environment before running headless"
    if not token.strip():
        return "no token given; a gated model will fail to download"
    from huggingface_hub import login

    login(token=token.strip(), add_to_git_credential=False)
    return "logged in to the Hugging Face hub (the token is not shown)"


def figure_path(cfg: Config, name: str) -> Path:
    return Path(cfg.output_dir) / FIGURES_DIR / f"{name}.png"


# ----------------------------------------------------------------------------- 02: tokenizer and padding

@torch.no_grad()
def attention_mask_demo(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str]) -> Table:
    """Batch `texts` with left padding (as generation does) and follow each row's next token: its most likely
    token alone, and that token's probability alone, padded with the attention mask, and padded without it
    (the model then reads the pads as text), with the most likely token without the mask."""
    from tangpoem.generate import left_pad

    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    batch = {k: v.to(device) for k, v in left_pad(encoded, tokenizer.pad_token_id).items()}
    with_mask = model(**batch).logits[:, -1].float().softmax(-1)
    without_mask = model(input_ids=batch["input_ids"]).logits[:, -1].float().softmax(-1)
    shown = lambda t: repr(tokenizer.decode([t]))[1:-1] or "∅"  # noqa: E731  (a newline token stays visible)
    rows = []
    for i, ids in enumerate(encoded):
        alone = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().softmax(-1)
        token = int(alone.argmax())
        rows.append([texts[i], batch["input_ids"].shape[1] - len(ids), shown(token), f"{alone[token]:.4f}",
                     f"{with_mask[i, token]:.4f}", f"{without_mask[i, token]:.4f}", shown(int(without_mask[i].argmax()))])
    return Table(["text", "pads", "next token (alone)", "P alone", "P padded, with mask", "P padded, no mask",
                  "next token (no mask)"], rows)


# ----------------------------------------------------------------------------- 03: decoding

@dataclass
class NextTokenDistribution:
    """The model's logits for the token after `context`, with the `top_n` most likely candidates."""

    context: str
    logits: torch.Tensor  # (V,) float32
    top_ids: list[int]
    top_labels: list[str]

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        return torch.softmax(self.logits / temperature, dim=-1)

    def top_probs(self, temperature: float = 1.0) -> list[float]:
        return self.probs(temperature)[self.top_ids].tolist()

    def kept(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> list[bool]:
        """For each top candidate: does it survive transformers' own TopK / TopP warpers (what generate uses)?"""
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        scores = (self.logits / temperature)[None]  # (1, V)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        finite = torch.isfinite(scores[0])
        return [bool(finite[i]) for i in self.top_ids]


@torch.no_grad()
def next_token_distribution(model: torch.nn.Module, tokenizer: Any, cfg: Config, couplet: str,
                            answer_prefix: str = "", top_n: int = 20) -> NextTokenDistribution:
    """Logits of the next token after the course prompt for `couplet` (plus an optional start of the answer)."""
    from tangpoem.prompt import INSTRUCTION
    from tangpoem.tokens import encode_prompt

    ids = encode_prompt(tokenizer, INSTRUCTION, couplet, cfg.prompt_mode)
    ids += tokenizer(answer_prefix, add_special_tokens=False)["input_ids"] if answer_prefix else []
    model.eval()
    logits = model(input_ids=torch.tensor([ids], device=next(model.parameters()).device)).logits[0, -1].float().cpu()
    top_ids = logits.topk(top_n).indices.tolist()
    return NextTokenDistribution(couplet + answer_prefix, logits, top_ids, [tokenizer.decode([i]) for i in top_ids])


def candidates_table(dist: NextTokenDistribution, top_k: int, top_p: float) -> Table:
    """The shown candidates with their probabilities (T = 1), the running total that top-p cuts at, and
    whether top-k and top-p keep each one (transformers' own warpers decide)."""
    probs = dist.top_probs()
    by_k, by_p = dist.kept(top_k=top_k), dist.kept(top_p=top_p)
    rows, total = [], 0.0
    for rank, (label, p, k, q) in enumerate(zip(dist.top_labels, probs, by_k, by_p), start=1):
        total += p
        rows.append([rank, repr(label)[1:-1], f"{p:.4f}", f"{total:.4f}", "✓" if k else "✗", "✓" if q else "✗"])
    return Table(["rank", "token", "P 機率", "cumulative 累積", f"top_k = {top_k} keeps", f"top_p = {top_p:g} keeps"], rows)


def compare_decoding(model: torch.nn.Module, tokenizer: Any, cfg: Config, couplet: str,
                     variants: Mapping[str, Mapping[str, Any]]) -> Table:
    """The continuation of one couplet under several decoding settings (config overrides)."""
    from tangpoem.generate import demo_rows, generate

    rows = []
    for name, overrides in variants.items():
        variant = dataclasses.replace(cfg, **overrides)
        rows.append([name, generate(model, tokenizer, demo_rows([couplet]), variant, progress=False)[0]])
    return Table(["decoding 解碼設定", f"{couplet} → continuation 續寫"], rows)


def opening(text: str) -> str:
    """The first 4 characters of a continuation, verse marks and spaces left out."""
    from tangpoem.grade.normalize import split_verses

    return "".join(split_verses(text))[:4]


def openings(model: torch.nn.Module, tokenizer: Any, cfg: Config, couplets: Sequence[str],
             variants: Mapping[str, Mapping[str, Any]]) -> Table:
    """Each couplet's first verse under several decoding settings (config overrides), and in the last row each
    setting's commonest opening (the first four characters; empty continuations have none) with how many
    continuations share it."""
    from tangpoem.generate import demo_rows, generate
    from tangpoem.grade.normalize import split_verses

    columns, commonest = [], []
    for overrides in variants.values():
        poems = generate(model, tokenizer, demo_rows(couplets), dataclasses.replace(cfg, **overrides), progress=False)
        columns.append([(split_verses(p) or [""])[0] for p in poems])
        top = Counter(o for o in map(opening, poems) if o).most_common(1)
        commonest.append(f"{top[0][0]} ({top[0][1]} of {len(poems)})" if top else f"none (0 of {len(poems)})")
    rows = [[c, *verses] for c, verses in zip(couplets, zip(*columns))]
    return Table(["couplet 上聯", *variants], [*rows, ["commonest opening 最常見的開頭", *commonest]])


def save_demo_poems(cfg: Config, couplets: Sequence[str], poems: Sequence[str]) -> Path:
    """Keep the base model's demo poems for 06's before/after table (each notebook runs in a fresh kernel)."""
    records = [{"input": c, "predict": p} for c, p in zip(couplets, poems)]
    return atomic_write_json(Path(cfg.output_dir) / DEMO_BEFORE_FILE,
                             {"model_name_or_path": cfg.model_name_or_path, "poems": records})


def load_demo_poems(cfg: Config, couplets: Sequence[str]) -> list[str] | None:
    """03's demo poems, if 03 ran on the same model and couplets; else None."""
    path = Path(cfg.output_dir) / DEMO_BEFORE_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    poems = {r["input"]: r["predict"] for r in saved.get("poems", [])}
    if saved.get("model_name_or_path") != cfg.model_name_or_path or any(c not in poems for c in couplets):
        return None
    return [poems[c] for c in couplets]


# ----------------------------------------------------------------------------- 04: data and tokens

def row_tokens(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> tuple[list[str], list[bool]]:
    """Each token of an encoded row as text, and whether the loss learns it (label != IGNORE_INDEX)."""
    from tangpoem.tokens import IGNORE_INDEX

    return tokenizer.convert_ids_to_tokens(list(input_ids)), [label != IGNORE_INDEX for label in labels]


def rows_table(rows: Sequence[Any], limit: int = 3) -> Table:
    return Table(["#", "instruction", "input 上聯", "output 下文"],
                 [[i, r.instruction, r.input, r.output or ""] for i, r in enumerate(rows[:limit])])


def shortest_and_longest(rows: Sequence[Any]) -> list[Any]:
    """Two encoded rows of different lengths (the shortest and the longest), so a batch of them needs padding."""
    by_length = sorted(rows, key=lambda r: len(r.input_ids))
    return [by_length[0], by_length[-1]]


def batch_table(batch: Mapping[str, torch.Tensor], tokenizer: Any, row: int = 0, before: int = 5, after: int = 3) -> Table:
    """One row of a collated batch where its tokens end and its padding starts: `before` positions of the row's
    end (answer, EOS) and `after` positions of padding, each with its input id, attention mask and label."""
    ids, mask, labels = (batch[k][row].tolist() for k in ("input_ids", "attention_mask", "labels"))
    end = mask.index(0) if 0 in mask else len(mask)  # right padding: the first pad
    window = range(max(0, end - before), min(len(ids), end + after))
    tokens = tokenizer.convert_ids_to_tokens([ids[i] for i in window])
    return Table(["position", "token", "input_ids", "attention_mask", "labels"],
                 [[i, repr(t)[1:-1], ids[i], mask[i], labels[i]] for i, t in zip(window, tokens)])


def homework_prompt_length(tokenizer: Any, row: Any, cutoff_len: int, mode: str = "course") -> Table:
    """The prompt's length as the homework measured it (tokenized with padding="max_length", so it always
    equals cutoff_len and the mask covered the whole row) and as it is."""
    from tangpoem.prompt import build_prompt
    from tangpoem.tokens import encode_prompt

    prompt = build_prompt(tokenizer, row.instruction, row.input, mode)
    homework = len(tokenizer(prompt, truncation=True, max_length=cutoff_len + 1, padding="max_length")["input_ids"]) - 1
    actual = len(encode_prompt(tokenizer, row.instruction, row.input, mode))
    return Table(["measured 量法", "prompt tokens", "masked as prompt (-100)"], [
        ['homework: tokenizer(prompt, padding="max_length", max_length=cutoff_len + 1) - 1', homework,
         f"{homework} (every token of a row ≤ {cutoff_len} tokens)"],
        ["tangpoem: tokens.encode_prompt (no padding)", actual, f"{actual} (the answer and EOS are learned)"],
    ])


# ----------------------------------------------------------------------------- 06: generation

def checkpoints_table(cfg: Config) -> Table:
    """The checkpoints in output_dir with their validation figures (if trained with val_size), and the one
    `checkpoint_index` picks ("best": by best_metric)."""
    from tangpoem.checkpoints import checkpoint_evaluation, checkpoint_step, list_checkpoints, picked_index
    from tangpoem.evaluate import FIGURES

    found = list_checkpoints(cfg.output_dir)
    picked = picked_index(found, cfg.checkpoint_index, cfg.best_metric)
    figures = [checkpoint_evaluation(p) or {} for p in found]
    shown = [name for name in FIGURES if any(f.get(name) is not None for f in figures)]
    return Table(["index", "from the end", "step", *shown, "path", "picked"],
                 [[i, i - len(found), checkpoint_step(p), *(f.get(name) for name in shown), str(p), "←" if i == picked else ""]
                  for i, (p, f) in enumerate(zip(found, figures))])


def before_after(model: torch.nn.Module, tokenizer: Any, cfg: Config, couplets: Sequence[str]) -> Table:
    """The demo couplets before fine-tuning (03's saved poems, or this model with its adapter switched
    off) and after (with the adapter)."""
    from tangpoem.generate import demo_rows, generate

    rows = demo_rows(couplets)
    before = load_demo_poems(cfg, couplets)
    if before is None:
        if not hasattr(model, "disable_adapter"):
            raise InputError(f"{display_path(Path(cfg.output_dir) / DEMO_BEFORE_FILE)}: no base-model poems of this model from 03, "
                             "and its adapter is merged (or absent), so it cannot be switched off: run 03 first, or load the "
                             "model with load_for_generation(cfg, adapter_apart=True)")
        with model.disable_adapter():  # a PeftModel: the base model's weights alone
            before = generate(model, tokenizer, rows, cfg, progress=False)
    after = generate(model, tokenizer, rows, cfg, progress=False)
    return Table(["couplet 上聯", "before 微調前", "after 微調後"], [list(r) for r in zip(couplets, before, after)])


# ----------------------------------------------------------------------------- 02: model memory, 03/06: poems

def quantization_config_for(cfg: Config) -> Any:
    """The BitsAndBytesConfig `load_base_model` uses with load_in_4bit: this GPU's compute dtype,
    or a T4's (float16) when there is no GPU, so the CPU notebook still shows the homework's setup."""
    from tangpoem.model import quantization_config
    from tangpoem.runtime import resolve_compute_dtype, resolve_device

    dtype = resolve_compute_dtype(cfg, resolve_device(cfg)) if torch.cuda.is_available() else torch.float16
    return quantization_config(dtype)


BREEZE_PARAMETERS = 7_490_000_000  # Breeze-7B-Instruct v0.1, for scale


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def weight_memory(num_parameters: int) -> Table:
    """Memory for the weights alone at each precision, for this model and for a 7B one
    (activations, LoRA and the optimizer come on top)."""
    bits = {"float32": 32, "float16 / bfloat16": 16, "int8": 8, "NF4 + double quant (embeddings stay 16-bit: ~4.3 GB in practice)": 4.127}  # 4 + 8/64 + 32/(64*256)
    return Table(["precision 精度", "bits/param", f"this model ({num_parameters:,} params)", "Breeze-7B (7.49 B)"],
                 [[name, b, _size(num_parameters * b / 8), _size(BREEZE_PARAMETERS * b / 8)] for name, b in bits.items()])


# The fields the homework sets on each config object, and what they mean (TRL's notebooks comment each argument).
QUANTIZATION_FIELDS = {
    "load_in_4bit": "store the linear layers' weights in 4 bits",
    "bnb_4bit_quant_type": "nf4: 16 levels at the quantiles of a normal distribution, as weights are spread",
    "bnb_4bit_use_double_quant": "quantize the per-block scales too (~0.4 bit per weight saved)",
    "bnb_4bit_compute_dtype": "each matmul dequantizes its block to this dtype (a T4: float16, no bf16)",
    "bnb_4bit_quant_storage": "the tensor type that holds two 4-bit weights per byte",
}
LORA_FIELDS = {
    "r": "rank of A (r × in) and B (out × r); the update is B·A",
    "lora_alpha": "the update is scaled by lora_alpha / r",
    "lora_dropout": "dropout on the adapter's input while training",
    "target_modules": "the linear layers that get adapters",
    "bias": "biases stay frozen",
    "task_type": "CAUSAL_LM: next-token prediction (peft wraps the model as PeftModelForCausalLM)",
}


def fields_table(config: Any, fields: Mapping[str, str]) -> Table:
    """The public fields of a real config object (BitsAndBytesConfig, LoraConfig) with what each means."""
    def shown(value: Any) -> str:
        if isinstance(value, (set, frozenset, list, tuple)):
            return ", ".join(sorted(map(str, value)))
        return str(value.value if hasattr(value, "value") else value)  # enums (TaskType) by their value

    return Table([f"{type(config).__name__} field", "value", "meaning 意義"],
                 [[name, shown(getattr(config, name)), meaning] for name, meaning in fields.items()])


def parameters_table(model: torch.nn.Module) -> Table:
    """The model's parameters by trainable or frozen and storage type, with their share: LoRA's trainable
    matrices beside the frozen base (4-bit weights counted as weights, two per stored byte)."""
    counts: dict[tuple[str, str], int] = {}
    for param in model.parameters():
        packed = param.__class__.__name__ == "Params4bit"
        kind = ("trainable 訓練" if param.requires_grad else "frozen 凍結", "nf4 (in uint8)" if packed else str(param.dtype).removeprefix("torch."))
        counts[kind] = counts.get(kind, 0) + param.numel() * (2 if packed else 1)
    total = sum(counts.values())
    return Table(["parameters 參數", "dtype", "count", "share 占比"],
                 [[kind, dtype, f"{n:,}", f"{n / total:.2%}"] for (kind, dtype), n in sorted(counts.items(), reverse=True)])


def poems_table(couplets: Sequence[str], poems: Sequence[str], heading: str = "continuation 續寫") -> Table:
    return Table(["couplet 上聯", heading], [[c, p] for c, p in zip(couplets, poems)])


# ----------------------------------------------------------------------------- 07: grading

def repair_notes(result: Any) -> str:
    """What the grader repaired in results.txt (a repeated couplet, stray text ...) or left unscored (verses past
    the answer's), one line each; or one line saying there was nothing to note."""
    notes = [*result.notes, *(f"poem {p.index}: {note}" for p in result.poems for note in p.notes)]
    if not notes:
        return f"no repairs and no notes: every line of {result.path} was in the course's format"
    heading = f"{len(notes)} note{'s' if len(notes) > 1 else ''} from the grader (repairs, and what it did not score) on {result.path}:"
    return "\n".join([heading, *(f"- {note}" for note in notes)])


def judge_table(result: Any, url: str | None, model: str | None, cache_dir: str | os.PathLike | None = None) -> Table:
    """The LLM judge's format and content scores (0-10) per poem and the course's marks, or, when `url` and
    `model` are not both set, how to turn it on."""
    if not (url and model):
        return Table(["LLM judge 評審"], [["off. To score each poem's format and content (0-10) as the course's GPT-4 judge did, "
                                            'set judge_url (e.g. "http://127.0.0.1:8000/v1": vLLM, llama.cpp\'s server, OpenAI) and '
                                            'judge_model in the parameters cell; the API key comes from the OPENAI_API_KEY environment variable.']])
    from tangpoem.grade.judge import judge_file
    from tangpoem.grade.judge_view import marks_line, score_text

    judgement = judge_file(result, url, model, cache_dir=cache_dir)
    rows = [[p.index, p.input, score_text(v.format_score), score_text(v.content_score), v.status, v.reason]
            for p, v in zip(result.poems, judgement.verdicts)]
    rows.append(["marks", marks_line(judgement), "", "", "", ""])
    return Table(["#", "couplet 上聯", "format 格式", "content 內容", "status", f"reason ({model})"], rows)
