"""GPU speed and memory: the homework's recipe against tangpoem's, in one run on one GPU.

    python benchmarks/gpu_speed.py --data-dir DIR --commit SHA [--baseline-steps 65] [--baseline-prompts 15]

A random-initialised checkpoint of Breeze-7B's exact shape (speed and memory do not depend on the
weights' values; the hub is out of reach) is written to disk and loaded in NF4 through tangpoem.
Tokens come from a stand-in tokenizer: BPE merges for the prompt's ASCII, one token per Chinese
character (Breeze's own tokenizer is out of reach). Figures go to <results-dir>/<gpu>.json.

With --baseline-steps below 65 or --baseline-prompts below 15, the homework's recipe is timed on
that many steps / prompts and its whole-epoch / 15-prompt figure is that time scaled up; the JSON
says so beside each figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from tangpoem.config import load_config
from tangpoem.data import load_test_rows, load_train_rows
from tangpoem.io import atomic_write_json

BREEZE_SHAPE = dict(vocab_size=61952, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768)


def stand_in_tokenizer(data_dir: str) -> Any:
    """ASCII words merged as a 7B tokenizer would; every Chinese character (and full-width mark) one token.
    Llama-style otherwise: ▁ word marks, BOS added, no pad token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tangpoem.prompt import INSTRUCTION, course_prompt

    chars = sorted({ch for r in load_train_rows(data_dir) for ch in r.input + r.output}
                   | {ch for r in load_test_rows(data_dir) for ch in r.input} | set(course_prompt(INSTRUCTION, "")))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("[\u3000-\u9fff\uff00-\uffef]"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=len(chars) + 300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([course_prompt(INSTRUCTION, "")] * 200 + chars, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_checkpoint(path: Path, tokenizer: Any) -> int:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**BREEZE_SHAPE, sliding_window=None, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = MistralForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path, max_shard_size="5GB")
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return params


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak GB allocated during the call)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 1e9


def homework_training(base: torch.nn.Module, cfg: Any, tokenizer: Any, steps: int, out: Path) -> dict[str, Any]:
    """The homework's recipe: rows padded to 256, micro-batch 4 x accumulation 4, fp16 autocast,
    gradient checkpointing, HF Trainer."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments, default_data_collator

    from tangpoem.model import lora_config
    from tangpoem.tokens import IGNORE_INDEX, encode_training_rows

    rows = encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, 1040), 256).rows
    dataset = [{"input_ids": r.input_ids + [tokenizer.pad_token_id] * (256 - len(r.input_ids)),
                "labels": r.labels + [IGNORE_INDEX] * (256 - len(r.labels)),
                "attention_mask": [1] * len(r.input_ids) + [0] * (256 - len(r.input_ids))} for r in rows]
    model = get_peft_model(prepare_model_for_kbit_training(base, use_gradient_checkpointing=True), lora_config(cfg))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=4,
                             num_train_epochs=1, max_steps=steps, learning_rate=3e-4, fp16=True, warmup_steps=50,
                             logging_steps=20, save_strategy="no", report_to="none", seed=42,
                             gradient_checkpointing=True, optim="adamw_torch", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    _, seconds, peak = timed(trainer.train)
    figure = {"steps_timed": steps, "seconds_timed": seconds, "peak_gb": peak, "seconds_per_step": seconds / steps,
              "epoch_seconds": seconds / steps * 65, "epoch_seconds_is": "measured" if steps == 65 else f"scaled from {steps} steps"}
    model.unload()  # the LoRA layers go; the base stays for the next recipe
    return figure


def homework_generation(model: torch.nn.Module, tokenizer: Any, cfg: Any, prompts: int) -> dict[str, Any]:
    """One prompt at a time with output_scores and transformers' no_repeat_ngram_size 3, as the homework."""
    from tangpoem.generate import generation_config
    from tangpoem.tokens import encode_prompt

    rows = load_test_rows(cfg.data_dir)[:prompts]
    gen_config = generation_config(cfg, tokenizer)
    gen_config.min_new_tokens = cfg.max_new_tokens  # random weights never stop: force the length
    model.eval()

    def run() -> None:
        for row in rows:
            ids = torch.tensor([encode_prompt(tokenizer, row.instruction, row.input)], device="cuda")
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_config,
                           output_scores=True, return_dict_in_generate=True)

    _, seconds, peak = timed(run)
    return {"prompts_timed": prompts, "seconds_timed": seconds, "peak_gb": peak,
            "seconds_15": seconds / prompts * 15, "seconds_15_is": "measured" if prompts == 15 else f"scaled from {prompts} prompts"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-speed"))
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--baseline-steps", type=int, default=65)
    parser.add_argument("--baseline-prompts", type=int, default=15)
    parser.add_argument("--t4-steps", type=int, default=8)
    parser.add_argument("--levers", action="store_true", help="only tangpoem's training, each lever on and off")
    parser.add_argument("--build-only", action="store_true", help="only write the Breeze-shaped checkpoint (for DDP runs)")
    args = parser.parse_args()

    import bitsandbytes
    import peft
    import transformers

    from tangpoem.decoding import merge_lora_dequantized
    from tangpoem.generate import generate
    from tangpoem.model import load_base_model, load_tokenizer
    from tangpoem.train import train

    name = torch.cuda.get_device_name()
    results: dict[str, Any] = {
        "device": name, "commit": args.commit, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
        "model": "random-initialised Mistral of Breeze-7B's shape, NF4 double quantization",
        "tokenizer": "stand-in: BPE for the prompt's ASCII, one token per Chinese character",
        "not_run": ["(c) TRL SFTTrainer: TRL and datasets are not on the device and were not carried",
                    "DDP on 2 GPUs: needs the 2-GPU kind; not run in this session"],
        "figures": {}, "errors": {},
    }
    stem = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    out_file = args.results_dir / (stem + ("-levers" if args.levers else "") + ".json")
    figures = results["figures"]

    def stage(key: str, fn: Callable[[], Any]) -> Any:
        print(f"--- {key}", flush=True)
        try:
            value = fn()
            print(json.dumps({key: value}, default=str), flush=True)
            return value
        except Exception as e:  # record and go on: one broken stage must not lose the others' figures
            results["errors"][key] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return None
        finally:
            atomic_write_json(out_file, results)

    ckpt = args.work / "breeze-shape"
    shutil.rmtree(args.work, ignore_errors=True)
    tokenizer = stand_in_tokenizer(args.data_dir)
    figures["parameters"], figures["build_seconds"], _ = timed(lambda: build_checkpoint(ckpt, tokenizer))
    if args.build_only:
        print(f"wrote {ckpt}")
        return
    fast = load_config("breeze-h100", {"model_name_or_path": str(ckpt), "data_dir": args.data_dir,
                                       "output_dir": str(args.work / "b"), "max_new_tokens": 128, "min_new_tokens": 128})
    tokenizer = load_tokenizer(fast)
    base, figures["load_nf4_seconds"], figures["nf4_loaded_gb"] = timed(lambda: load_base_model(fast))

    if args.levers:  # tangpoem's training with each lever on or off, 65 steps each, on this one base
        variants = {  # fp32-upcast variants last: that cast changes the shared base for good
            "padded, bf16 norms": {"padding_free": False, "kbit_fp32_upcast": False},
            "packed, bf16 norms": {"kbit_fp32_upcast": False},
            "packed, bf16 norms, answer logits only": {"kbit_fp32_upcast": False, "answer_logits_only": True},
            "packed, fp32 norms (breeze-h100 as run before)": {},
        }
        figures["levers"] = {}
        for label, overrides in variants.items():
            cfg = load_config("breeze-h100", {**fast.to_dict(), **overrides, "output_dir": str(args.work / re.sub(r"\W+", "-", label))})

            def lever(cfg=cfg) -> dict[str, Any]:
                result, _, peak = timed(lambda: train(cfg, base_model=base))
                result.model.unload()
                return {"loop_seconds": result.seconds, "peak_gb": peak, "last_loss": result.history[-1]["loss"]}

            figures["levers"][label] = stage(f"lever: {label}", lever)
        atomic_write_json(out_file, results)
        return

    # (a) the homework's recipe (its LoRA layers are unloaded afterwards: the base serves every stage)
    figures["train_homework"] = stage("train_homework", lambda: homework_training(base, fast, tokenizer, args.baseline_steps, args.work / "a"))

    # the breeze-colab-t4 profile (fp16 autocast, checkpointing, micro-batch 4): peak memory and speed
    t4 = load_config("breeze-colab-t4", {"model_name_or_path": str(ckpt), "data_dir": args.data_dir,
                                         "output_dir": str(args.work / "t4"), "max_steps": args.t4_steps,
                                         "compute_dtype": "float16", "save_steps": 1000})

    def t4_profile() -> dict[str, Any]:
        result, seconds, peak = timed(lambda: train(t4, base_model=base))
        result.model.unload()
        return {"steps": len(result.history), "loop_seconds": result.seconds, "peak_gb": peak,
                "epoch_seconds_scaled": result.seconds / len(result.history) * 65,
                "note": "autocast fp16 as on a T4; the shared NF4 load dequantizes to bf16"}

    figures["t4_profile"] = stage("t4_profile", t4_profile)

    # (b) tangpoem's GPU recipe: same rows, 16 rows a step, 65 steps, same schedule
    trained: dict[str, Any] = {}

    def fast_training() -> dict[str, Any]:
        result, seconds, peak = timed(lambda: train(fast, base_model=base))
        trained["model"] = result.model
        return {"loop_seconds": result.seconds, "call_seconds": seconds, "peak_gb": peak,
                "first_loss": result.history[0]["loss"], "last_loss": result.history[-1]["loss"], "steps": len(result.history)}

    figures["train_tangpoem"] = stage("train_tangpoem", fast_training)

    # generation with the trained adapter: the homework's way, then tangpoem's (LoRA merged into
    # dequantized bf16 weights, the 15 prompts in one batch, n-gram bans on the device)
    tuned = trained.get("model")
    if tuned is not None:
        figures["generate_homework"] = stage("generate_homework", lambda: homework_generation(tuned, tokenizer, fast, args.baseline_prompts))

        def fast_generation() -> dict[str, Any]:
            merged, merge_seconds, _ = timed(lambda: merge_lora_dequantized(tuned, torch.bfloat16))
            rows = load_test_rows(args.data_dir)
            out: dict[str, Any] = {"merge_seconds": merge_seconds, "new_tokens_per_poem": fast.max_new_tokens}
            for attempt in ("first", "second"):
                _, seconds, peak = timed(lambda: generate(merged, tokenizer, rows, fast, progress=False))
                out[f"{attempt}_seconds"], out["peak_gb"] = seconds, peak
            return out

        figures["generate_tangpoem"] = stage("generate_tangpoem", fast_generation)
    if figures.get("train_homework") and figures.get("train_tangpoem"):
        figures["train_speedup"] = figures["train_homework"]["epoch_seconds"] / figures["train_tangpoem"]["loop_seconds"]
    if figures.get("generate_homework") and figures.get("generate_tangpoem"):
        figures["generate_speedup"] = figures["generate_homework"]["seconds_15"] / figures["generate_tangpoem"]["second_seconds"]
    if figures.get("train_homework") and figures.get("t4_profile"):
        figures["t4_profile_speedup"] = figures["train_homework"]["epoch_seconds"] / figures["t4_profile"]["epoch_seconds_scaled"]
    atomic_write_json(out_file, results)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
