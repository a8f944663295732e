"""`tangpoem export`: a checkpoint as something others can load. The LoRA adapter with a model card
(README.md), or with `--merged` the adapter merged into the base model's weights: a plain fp16/bf16
`transformers` model. `--push-to-hub REPO` uploads the folder with huggingface_hub.

The merge is the one peft and Unsloth recommend for a QLoRA adapter: the NF4 base weights dequantized to
16 bits, the adapter's B·A added to them (tangpoem.fast.dense.merge_lora_dequantized); never peft's merge
into the 4-bit weights, which would quantize the sum again. The folder is written into a temp folder and
renamed at the end: an export is whole or absent. docs/export.md has the GGUF step (llama.cpp).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from tangpoem.builtin import is_builtin
from tangpoem.checkpoints import (ADAPTER_CONFIG_FILE, ADAPTER_FILE, CHECKPOINT_RE, STATE_FILE, adapter_problem, checkpoint_step,
                                  load_training_state)
from tangpoem.config import FIELDS, Config, load_config, validation_rows
from tangpoem.errors import InputError, RunError, setting
from tangpoem.generate import DEMO_COUPLETS
from tangpoem.io import atomic_dir, atomic_write_text, display_path, parse_json, umask_mode
from tangpoem.prompt import INSTRUCTION, SYSTEM_PROMPT, course_prompt
from tangpoem.resources import REPO_URL

CARD_FILE = "README.md"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The grader's mean scores shown on the card: (name on the card, key in grades.json's summary.mean)
CARD_SCORES = (("charF1", "char_f1"), ("chrF", "chrf"), ("BLEU", "bleu"), ("edit similarity", "edit_similarity"),
               ("verse count ok", "verse_count_ok"), ("verse lengths ok", "lengths_ok"), ("平仄 pingze", "pingze_score"),
               ("押韻 rhyme", "rhyme_score"))


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint folder says about itself."""

    path: Path
    adapter_config: dict[str, Any]
    cfg: Config                # the training config (training_state.pt), or one naming the adapter's base model
    history: list[dict[str, Any]]
    trained_config: bool       # cfg came from training_state.pt

    @property
    def step(self) -> int | None:
        return checkpoint_step(self.path) if CHECKPOINT_RE.match(self.path.name) else None


def read_checkpoint(adapter_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Checkpoint:
    """The adapter folder, its training config (with `overrides` on top) and loss history; InputError
    when it is not a LoRA adapter folder."""
    path = Path(adapter_dir)
    name = display_path(path)
    if not path.is_dir():
        raise InputError(f"--adapter {name}: no such folder; give a checkpoint folder, e.g. outputs/run/checkpoint-65")
    if problem := adapter_problem(path):
        raise InputError(f"--adapter {name}: not a LoRA adapter folder ({problem}); "
                         "give a checkpoint folder, e.g. outputs/run/checkpoint-65")
    adapter_config = parse_json((path / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"), f"{name}/{ADAPTER_CONFIG_FILE}")
    if not isinstance(adapter_config, dict) or adapter_config.get("peft_type") != "LORA":
        raise InputError(f"--adapter {name}: {ADAPTER_CONFIG_FILE} is not a LoRA adapter's (peft_type is not LORA)")
    state = load_training_state(path) if (path / STATE_FILE).is_file() else {}
    trained = {k: v for k, v in state.get("config", {}).items() if k in FIELDS}
    if not trained:
        trained = {"model_name_or_path": adapter_config.get("base_model_name_or_path") or ""}
    cfg = load_config(None, {**trained, **(overrides or {})}, source="--set")
    return Checkpoint(path, adapter_config, cfg, list(state.get("history", [])), bool(state.get("config")))


def check_out_dir(out: Path, adapter: Path, force: bool) -> None:
    """OUT is new or an empty folder (or --force), and never the checkpoint or a folder holding it."""
    name = display_path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{name}: exists and is not a folder; choose a new folder for the export")
    if out.resolve() == adapter.resolve() or out.resolve() in adapter.resolve().parents:
        raise InputError(f"{name}: holds the checkpoint itself; choose another folder for the export")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{name}: exists and is not empty; choose a new folder, or pass --force to replace it")
    if not out.parent.is_dir():
        raise InputError(f"{name}: its parent folder {display_path(out.parent)} does not exist")


def read_grades(path: Path | None) -> tuple[list[tuple[str, str]], str | None]:
    """(score name, value) rows for the card from a grades.json (tangpoem grade --json, notebook 07), and
    where they came from; nothing when there is none."""
    if path is None or not path.is_file():
        return [], None
    report = parse_json(path.read_text(encoding="utf-8"), display_path(path))
    try:
        mean = report["summary"]["mean"]
        rows = [(label, f"{mean[key]:.3f}") for label, key in CARD_SCORES if mean.get(key) is not None]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{display_path(path)}: not the grader's JSON (no summary.mean); give notebook 07's grades.json "
                         "or the output of `tangpoem grade ... --json`") from None
    return rows, path.name  # the name only: a card is public, the folders it came from are not


def read_validation(ckpt: Checkpoint) -> list[tuple[str, str]]:
    """(figure, value) rows of the validation figures saved with the checkpoint during training (eval.json);
    nothing when it was trained without validation (val_size 0)."""
    from tangpoem.checkpoints import checkpoint_evaluation
    from tangpoem.evaluate import FIGURES

    figures = checkpoint_evaluation(ckpt.path) or {}
    return [(name, f"{figures[name]:.4f}" if name == "val_loss" else f"{figures[name]:.3f}")
            for name in FIGURES if isinstance(figures.get(name), (int, float))]


# ----------------------------------------------------------------------------- the model card

def base_model_text(cfg: Config) -> str:
    name = cfg.model_name_or_path
    return f"{name} (ships inside the tangpoem package)" if is_builtin(name) else name


def hyperparameters(ckpt: Checkpoint) -> list[tuple[str, str]]:
    cfg = ckpt.cfg
    lora = ckpt.adapter_config  # what the adapter itself records, whether or not its training state is there
    rank = (lora.get("r", cfg.lora_r), lora.get("lora_alpha", cfg.lora_alpha), lora.get("lora_dropout", cfg.lora_dropout))
    rows = [("LoRA rank r / alpha / dropout", " / ".join(str(v) for v in rank)),
            ("LoRA target modules", ", ".join(sorted(ckpt.adapter_config.get("target_modules") or cfg.lora_target_modules)))]
    if ckpt.trained_config:
        steps = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_epochs} epoch{'s' * (cfg.num_epochs > 1)}"
        rows += [("learning rate (linear warmup, linear decay)", f"{cfg.learning_rate:g}, {cfg.warmup_steps} warmup steps"),
                 ("rows per optimizer step (micro-batch)", f"{cfg.batch_size} ({cfg.micro_batch_size})"),
                 ("length of training", steps), ("weight decay / gradient clipping", f"{cfg.weight_decay:g} / {cfg.max_grad_norm:g}"),
                 ("seed", str(cfg.seed))]
    return rows


def loss_rows(history: list[dict[str, Any]], most: int = 10) -> list[tuple[str, float]]:
    """The training loss as at most `most` rows (steps "a–b", their mean loss): one step's loss is noisy."""
    if not history:
        return []
    size = -(-len(history) // most)  # ceil
    windows = [history[i : i + size] for i in range(0, len(history), size)]
    return [(f"{w[0]['step']}–{w[-1]['step']}" if len(w) > 1 else str(w[0]["step"]),
             sum(float(r["loss"]) for r in w) / len(w)) for w in windows]


def _literal(text: str) -> str:
    """A Python string literal of `text` in double quotes, Chinese as written (JSON's string syntax is Python's)."""
    return json.dumps(text, ensure_ascii=False)


def usage_snippet(cfg: Config, where: str, merged: bool, dtype: str) -> str:
    """Python that loads the export and writes one poem with the course's prompt and decoding."""
    prompt = course_prompt("{instruction}", "{couplet}").replace(SYSTEM_PROMPT, "{system}")
    base, folder = _literal(cfg.model_name_or_path), _literal(where)
    lines = ["import torch"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"model = AutoModelForCausalLM.from_pretrained({folder}, dtype=torch.{dtype}, device_map=\"auto\")",
                  f"tokenizer = AutoTokenizer.from_pretrained({folder})"]
    elif is_builtin(cfg.model_name_or_path):
        lines += ["from peft import PeftModel", "from tangpoem.config import load_config",
                  "from tangpoem.model import load_base_model, load_tokenizer", "",
                  f"cfg = load_config(None, {{\"model_name_or_path\": {base}, \"load_in_4bit\": False}})",
                  "base, tokenizer = load_base_model(cfg), load_tokenizer(cfg)  # pip install tangpoem",
                  f"model = PeftModel.from_pretrained(base, {folder})"]
    else:
        lines += ["from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig", "",
                  "nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", bnb_4bit_use_double_quant=True,",
                  "                         bnb_4bit_compute_dtype=torch.float16)  # bfloat16 on an A100/L4/H100",
                  f"base = AutoModelForCausalLM.from_pretrained({base}, quantization_config=nf4, device_map=\"auto\")",
                  f"tokenizer = AutoTokenizer.from_pretrained({base})",
                  f"model = PeftModel.from_pretrained(base, {folder})"]
    lines += ["",
              f"system = {_literal(SYSTEM_PROMPT)}", f"instruction = {_literal(INSTRUCTION)}",
              f"couplet = {_literal(DEMO_COUPLETS[0])}", f"prompt = f{_literal(prompt)}",
              "ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)[\"input_ids\"]  # BOS, no EOS",
              "input_ids = torch.tensor([ids], device=model.device)",
              "output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,",
              f"                        temperature={cfg.temperature}, top_p={cfg.top_p}, "
              f"no_repeat_ngram_size={cfg.no_repeat_ngram_size}, max_new_tokens={cfg.max_new_tokens})",
              "print(couplet + tokenizer.decode(output[0, len(ids):], skip_special_tokens=True))"]
    return "\n".join(lines)


def model_card(ckpt: Checkpoint, where: str, merged: bool, dtype: str, grades: Path | None) -> str:
    """README.md: YAML metadata for the Hub (huggingface_hub's ModelCardData) and the card's text."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = ckpt.cfg
    quantized = ckpt.trained_config and cfg.load_in_4bit  # without the training state, 4-bit is not known
    base = None if is_builtin(cfg.model_name_or_path) or Path(cfg.model_name_or_path).is_absolute() else cfg.model_name_or_path
    data = ModelCardData(base_model=base, library_name="transformers" if merged else "peft", language=["zh"],
                         pipeline_tag="text-generation", tags=["tangpoem", "tang-poetry", "lora", "qlora" if quantized else "peft"])
    grade_rows, grades_source = read_grades(grades)
    template = Path(__file__).parent / "templates" / "model_card.md.j2"
    title = f"{Path(where).name}: {cfg.model_name_or_path.rsplit('/', 1)[-1]} fine-tuned to write Tang poems " \
            f"({'merged' if merged else 'LoRA adapter'})"
    return str(ModelCard.from_template(
        data, template_path=template, title=title, merged=merged, dtype=dtype, quantized=quantized, trained=ckpt.trained_config,
        base_model=base_model_text(cfg), checkpoint=ckpt.path.name, step=ckpt.step, cfg=cfg, repo_url=REPO_URL,
        hyperparameters=hyperparameters(ckpt), losses=loss_rows(ckpt.history), grades=grade_rows,
        validation=read_validation(ckpt), val_size=validation_rows(cfg),
        grades_source=grades_source, prompt=course_prompt(INSTRUCTION, "{first couplet 上聯}"),
        snippet=usage_snippet(cfg, where, merged, dtype)))


# ----------------------------------------------------------------------------- writing

def write_adapter(ckpt: Checkpoint, folder: Path) -> None:
    """The adapter's two files (no optimizer state, no random state). A built-in base is named by its name,
    not by the folder it was loaded from on the machine that trained it."""
    (folder / ADAPTER_FILE).write_bytes((ckpt.path / ADAPTER_FILE).read_bytes())
    config = dict(ckpt.adapter_config)
    if is_builtin(ckpt.cfg.model_name_or_path):
        config["base_model_name_or_path"] = ckpt.cfg.model_name_or_path
    atomic_write_text(folder / ADAPTER_CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_merged(ckpt: Checkpoint, folder: Path, dtype: torch.dtype) -> None:
    """The base model (NF4 on a GPU when it was trained so) with the adapter, dequantized and merged into
    `dtype` weights; saved with its tokenizer and the course's decoding as generation_config.json."""
    from tangpoem.fast.dense import merge_lora_dequantized
    from tangpoem.generate import generation_config
    from tangpoem.model import load_adapter, load_base_model, load_tokenizer
    from tangpoem.runtime import has_native_bf16, resolve_device

    device = resolve_device(ckpt.cfg)
    # The base loaded in the export's dtype, so that the NF4 weights dequantize straight to it (bf16 on a GPU
    # without native bf16, a T4: float32, rounded once at the end)
    load_dtype = torch.float32 if dtype == torch.bfloat16 and device.type == "cuda" and not has_native_bf16(device) else dtype
    cfg = dataclasses.replace(ckpt.cfg, compute_dtype=str(load_dtype).removeprefix("torch."))
    if cfg.load_in_4bit and device.type != "cuda":
        raise InputError(f"--merged: {display_path(ckpt.path)} was trained on the 4-bit (NF4) base, whose weights are "
                         "dequantized on a CUDA GPU; run this on a GPU runtime (see docs/export.md)")
    refuse_too_big_to_merge(cfg, dtype, device)
    model = load_adapter(load_base_model(cfg, device), str(ckpt.path))
    tokenizer = load_tokenizer(cfg)
    merged = merge_lora_dequantized(model, dtype)
    vars(merged.config).pop("quantization_config", None)  # not quantized any more: from_pretrained must not ask for bitsandbytes
    merged.config.dtype = dtype
    merged.generation_config = generation_config(cfg, tokenizer)
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def refuse_too_big_to_merge(cfg: Config, dtype: torch.dtype, device: torch.device) -> None:
    """The merge holds every dense weight beside the 4-bit model (~2.6 bytes a parameter in 16 bits: ~20 GB for
    Breeze, more than a T4's 15 GB): say so before loading, from the model's config alone."""
    if device.type != "cuda" or is_builtin(cfg.model_name_or_path):
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    except OSError:
        return  # loading the base model says what is wrong with its name
    with torch.device("meta"):
        parameters = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code).num_parameters()
    needed = parameters * (dtype.itemsize + (0.6 if cfg.load_in_4bit else dtype.itemsize))
    total = torch.cuda.get_device_properties(device).total_memory
    if needed > 0.95 * total:
        raise InputError(f"--merged: merging {parameters / 1e9:.1f} B parameters into {str(dtype)[6:]} needs about "
                         f"{needed / 2**30:.0f} GiB of GPU memory and this GPU has {total / 2**30:.0f} GiB; export the "
                         "adapter alone (no --merged) and merge on a bigger GPU (an L4, A100 or H100; see docs/export.md)")


def check_base_model(cfg: Config) -> None:
    """A base model named by a local path must be there (a hub id is checked when it is loaded)."""
    name = cfg.model_name_or_path
    local = Path(name).expanduser()
    if not is_builtin(name) and (local.is_absolute() or name.startswith((".", "~"))) and not local.is_dir():
        raise InputError(f"config key 'model_name_or_path' = {name!r}: no such folder (the base model this adapter was "
                         f"trained on); if it moved, say where: {setting('model_name_or_path', '/path/to/base')}")


def export(adapter: str | os.PathLike, out: str | os.PathLike, merged: bool = False, dtype: str = "bfloat16",
           grades: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None, force: bool = False,
           repo: str | None = None) -> Path:
    """Write the export into a temp folder beside OUT and rename it into place; returns OUT."""
    ckpt = read_checkpoint(adapter, overrides)
    check_base_model(ckpt.cfg)
    out = Path(out)
    check_out_dir(out, ckpt.path, force)
    if repo is not None:
        check_repo_id(repo)
    grades_path = Path(grades) if grades else None
    if grades and not grades_path.is_file():
        raise InputError(f"--grades {display_path(grades_path)}: no such file")
    card = model_card(ckpt, repo or str(out), merged, dtype, grades_path)
    with atomic_dir(out) as tmp:
        write_merged(ckpt, tmp, DTYPES[dtype]) if merged else write_adapter(ckpt, tmp)
        atomic_write_text(tmp / CARD_FILE, card.rstrip("\n") + "\n")
        for path in tmp.rglob("*"):  # some writers make 0600 files; an export is meant to be read by others
            os.chmod(path, umask_mode(directory=path.is_dir()))
    return out


# ----------------------------------------------------------------------------- the Hub

def check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise InputError(f"--push-to-hub {repo!r}: not a Hub repository id; write it as user/name") from None
    if "/" not in repo:
        raise InputError(f"--push-to-hub {repo!r}: give the owner too, as user/name (e.g. yourname/{repo})")


def upload_plan(folder: Path) -> list[tuple[str, int]]:
    """(path in the repository, bytes) of each file an upload of `folder` sends, in order."""
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


def transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's own errors (connection refused, timeouts): huggingface_hub 2 uses httpx2, 1 httpx,
    0.x requests; whichever is installed."""
    found = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload `folder` to the model repository `repo` (created if missing); its URL. The token comes from
    $HF_TOKEN or `hf auth login` (huggingface_hub reads it; it is never printed)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if get_token() is None:
        raise InputError("--push-to-hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a write token)")
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=folder, repo_type="model",
                          commit_message=f"tangpoem export of {folder.name}")
    except (HfHubHTTPError, OSError, *transport_errors()) as e:  # refused, offline, no write access ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"--push-to-hub {repo}: the upload failed ({first}); {display_path(folder)} is complete: "
                       "run the same command with --force to export and upload again") from None
    return str(url)


def export_command(adapter: str, out: str, merged: bool = False, dtype: str = "bfloat16", grades: str | None = None,
                   overrides: Mapping[str, Any] | None = None, force: bool = False, repo: str | None = None,
                   private: bool = False, dry_run: bool = False) -> int:
    """`tangpoem export`: write OUT, then (with a repo) upload it or, with --dry-run, say what would go up."""
    if dry_run and repo is None:
        raise InputError("--dry-run: goes with --push-to-hub REPO (it lists what would be uploaded)")
    started = time.perf_counter()
    folder = export(adapter, out, merged, dtype, grades, overrides, force, repo)
    plan = upload_plan(folder)
    size = sum(n for _, n in plan)
    print(f"wrote {display_path(folder)}: {len(plan)} files, {size / 2**20:.1f} MiB "
          f"({'merged, ' + dtype if merged else 'LoRA adapter'}) in {time.perf_counter() - started:.1f} s")
    if repo is None:
        return 0
    if dry_run:
        print(f"dry run: would upload to https://huggingface.co/{repo} (model repository{', private' if private else ''}):")
        for path, n in plan:
            print(f"  {path}  ({n:,} bytes)")
        return 0
    print(f"uploaded: {push_to_hub(folder, repo, private)}")
    return 0
