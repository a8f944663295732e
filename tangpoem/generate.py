"""Batched generation with the course prompt, and the course's submission files (results.txt/.json)."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tangpoem.checkpoints import adapter_problem, pick_checkpoint
from tangpoem.config import Config
from tangpoem.console import interactive
from tangpoem.data import Row, load_test_rows
from tangpoem.errors import InputError, RunError
from tangpoem.io import atomic_write_files, display_path
from tangpoem.model import load_adapter, load_base_model, load_tokenizer
from tangpoem.prompt import INSTRUCTION
from tangpoem.runtime import resolve_compute_dtype, resolve_device
from tangpoem.tokens import encode_prompt

# The homework's three demo couplets, shown before and after fine-tuning.
DEMO_COUPLETS = ("相見時難別亦難，東風無力百花殘。", "重帷深下莫愁堂，臥後清宵細細長。", "芳辰追逸趣，禁苑信多奇。")


def generation_config(cfg: Config, tokenizer: Any) -> Any:
    """The homework's decoding (sampling, temperature 0.1, top_p 0.3, no_repeat_ngram_size 3) plus top_k,
    as transformers' GenerationConfig. `generate` below applies the same semantics through
    `decoding.logits_processors` instead, which bans n-grams on the device (and, with
    `stop_by_probability`, adds a stop rule this config does not have)."""
    from transformers import GenerationConfig

    sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k) if cfg.do_sample else {}
    return GenerationConfig(
        do_sample=cfg.do_sample,
        num_beams=1,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.min_new_tokens or None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
        **sampling,
    )


def fast_generation_config(cfg: Config, tokenizer: Any) -> tuple[Any, Any]:
    """(GenerationConfig without n-gram bans and warpers, the processors that apply them on the device)."""
    from tangpoem.decoding import logits_processors

    gen_config = generation_config(cfg, tokenizer)
    # Neutral values, not None: None would let transformers fill in its defaults (top_k=50) after ours.
    gen_config.no_repeat_ngram_size = 0
    if cfg.do_sample:  # greedy decoding has no warpers to neutralize (and transformers flags sampling values beside it)
        gen_config.temperature, gen_config.top_k, gen_config.top_p = 1.0, 0, 1.0
    if cfg.static_cache:  # on a GPU fast.decode.GraphedSampler runs instead; transformers' generate where it can't:
        gen_config.cache_implementation = "static"
        gen_config.disable_compile = True  # there, no torch.compile of the decode step (~40 s for a 7B model)
    stop_eos = tokenizer.eos_token_id if cfg.stop_by_probability else None
    return gen_config, logits_processors(cfg.no_repeat_ngram_size, cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p, stop_eos)


def left_pad(prompts: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left padding, so every row's last prompt token sits at the same position and new tokens follow it."""
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, longest - len(ids) :] = torch.tensor(ids)
        attention_mask[i, longest - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def cut_at_eos(new_tokens: list[int], eos_token_id: int | None) -> list[int]:
    return new_tokens[: new_tokens.index(eos_token_id)] if eos_token_id in new_tokens else new_tokens


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, rows: Sequence[Row], cfg: Config, progress: bool = True) -> list[str]:
    """The model's continuation for each row, in batches. The answer is cut from the output by
    token position (everything after the prompt, up to the first EOS), never by splitting strings."""
    from tqdm.auto import tqdm

    from tangpoem.fast.decode import graphed_sampling

    model.eval()
    device = next(model.parameters()).device
    gen_config, processors = fast_generation_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)  # sampling is reproducible for a given seed and batch size
    predictions: list[str] = []
    prompts = [encode_prompt(tokenizer, r.instruction, r.input, cfg.prompt_mode) for r in rows]
    size = cfg.generation_batch_size
    longest = max((len(p) for p in prompts), default=0) + cfg.max_new_tokens

    def transformers_sampling(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config,
                                logits_processor=processors)
        return output[:, input_ids.shape[1] :]

    # static_cache on a GPU: each new token's step (forward, decoding rules, choice) replayed as one CUDA graph
    graphed = (graphed_sampling(model, processors, cfg.max_new_tokens, cfg.min_new_tokens, cfg.do_sample, tokenizer.eos_token_id,
                                tokenizer.pad_token_id, longest) if cfg.static_cache else contextlib.nullcontext())
    # cuDNN's attention plans every new shape, so each new prompt length would pay for a plan (docs/speed-log.md, run 10)
    with graphed as sampler, sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        sample = sampler or transformers_sampling
        for start in tqdm(range(0, len(prompts), size), desc="generate", disable=not (progress and interactive())):
            batch = {k: v.to(device) for k, v in left_pad(prompts[start : start + size], tokenizer.pad_token_id).items()}
            for tokens in sample(**batch).tolist():  # (B, new)
                text = tokenizer.decode(cut_at_eos(tokens, tokenizer.eos_token_id), skip_special_tokens=True)
                predictions.append(" ".join(text.split()))  # one line per poem in results.txt
    return predictions


def demo_rows(couplets: Sequence[str] = DEMO_COUPLETS) -> list[Row]:
    return [Row(INSTRUCTION, c) for c in couplets]


def load_for_generation(cfg: Config, adapter: str | Path | None = "auto",
                        adapter_apart: bool = False) -> tuple[torch.nn.Module, Any, Path | None]:
    """Base model plus the adapter picked by `checkpoint_index` ("auto"; "best": by `best_metric`), a given adapter
    dir, or none (None).

    With `dense_generation`, the NF4 weights are then dequantized once and the adapter merged into them
    (tangpoem.fast.dense, as `tangpoem export --merged` does): one product per layer instead of a 4-bit one
    plus the adapter's small kernels, in every step; the tokens are those of the 4-bit model with its
    adapter up to the rounding of W + B·A (a near tie at most). The decode step can then be replayed as a
    CUDA graph (`static_cache`). With `adapter_apart` (the app, which swaps adapters and switches them off) the
    adapter stays a peft adapter beside the dequantized weights."""
    device = resolve_device(cfg)
    if adapter == "auto":
        adapter = pick_checkpoint(cfg.output_dir, cfg.checkpoint_index, cfg.best_metric)
    elif adapter is not None and (problem := adapter_problem(Path(adapter))):
        raise InputError(f"--adapter {display_path(adapter)}: not a LoRA adapter folder ({problem}); give a checkpoint-N folder")
    model = load_base_model(cfg, device)
    tokenizer = load_tokenizer(cfg)
    if adapter is not None:
        model = load_adapter(model, str(adapter))
    if cfg.dense_generation:
        from tangpoem.fast.dense import dequantize_4bit_layers, merge_lora_dequantized

        dtype = resolve_compute_dtype(cfg, device)
        if adapter is None or adapter_apart:
            dequantize_4bit_layers(model, dtype)
        else:
            model = merge_lora_dequantized(model, dtype)
    model.config.use_cache = True
    return model, tokenizer, Path(adapter) if adapter else None


def format_results_txt(rows: Sequence[Row], predictions: Sequence[str]) -> str:
    """The course's submission format: one line per poem, `N. ` + input + output."""
    return "".join(f"{i}. {row.input}{pred}\n" for i, (row, pred) in enumerate(zip(rows, predictions), start=1))


def write_results(rows: Sequence[Row], predictions: Sequence[str], results_dir: str | Path) -> tuple[Path, Path]:
    """results.txt and results.json (instruction, input, predict), written as one pair or not at all."""
    from tangpoem.checkpoints import is_disk_full

    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise InputError(f"results folder {display_path(results_dir)}: a file is in the way; choose a folder (results_dir)")
    records = [{"instruction": r.instruction, "input": r.input, "predict": p} for r, p in zip(rows, predictions)]
    txt, js = results_dir / "results.txt", results_dir / "results.json"
    try:
        atomic_write_files({txt: format_results_txt(rows, predictions).encode("utf-8"),
                            js: (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode("utf-8")})
    except OSError as exc:
        if is_disk_full(exc, results_dir):
            raise RunError(f"no space left on device while writing {display_path(txt)} and results.json; "
                           "the earlier pair, if any, is kept") from None
        raise
    return txt, js


@dataclass
class SubmissionFiles:
    txt: Path  # results.txt, the file students hand in
    json: Path  # results.json
    load_seconds: float  # base model, adapter and (dense_generation) dequantization
    generate_seconds: float  # the 15 poems


def generate_test_results(cfg: Config, adapter: str | Path | None = "auto", progress: bool = True) -> SubmissionFiles:
    """The homework's last step: the 15 test poems with the chosen checkpoint, written for submission."""
    rows = load_test_rows(cfg.data_dir)
    started = time.perf_counter()
    model, tokenizer, used = load_for_generation(cfg, adapter)
    loaded = time.perf_counter()
    print(f"generate: {len(rows)} test poems with {used or 'the base model (no adapter)'}")
    predictions = generate(model, tokenizer, rows, cfg, progress=progress)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    generated = time.perf_counter()
    txt, js = write_results(rows, predictions, cfg.results_path)
    return SubmissionFiles(txt, js, loaded - started, generated - loaded)
