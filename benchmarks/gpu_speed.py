"""GPU speed and memory: the homework's recipe, TRL's SFTTrainer and tangpoem's, in one run on one GPU.

    python benchmarks/gpu_speed.py --data-dir DIR --commit SHA [--baseline-steps 65] [--trl-steps 65]
        [--baseline-prompts 15] [--t4-steps 65] [--stages train_homework,train_trl,...]
    python benchmarks/gpu_speed.py --data-dir DIR --levers train,overhead,fused,t4,t4fused,generate   # each lever on and off
    python benchmarks/gpu_speed.py --data-dir DIR --profile [--set key=value ...]   # where a step's time goes

A random-initialised checkpoint of Breeze-7B's exact shape (speed and memory do not depend on the
weights' values; the hub is out of reach) is written to disk and loaded in NF4 through tangpoem.
Tokens come from a stand-in tokenizer: BPE merges for the prompt's ASCII, one token per Chinese
character (Breeze's own tokenizer is out of reach). Figures go to <results-dir>/<gpu>[-suffix].json.
TRL (and datasets) must be importable for the train_trl stage; without them that stage is recorded
under "errors" and the others run.

With --baseline-steps / --trl-steps below 65 or --baseline-prompts below 15, those recipes are timed on
that many steps / prompts and their whole-epoch / 15-prompt figure is that time scaled up; the JSON
says so beside each figure.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from tangpoem.prompt import INSTRUCTION, course_prompt
    from tangpoem.tiny import build_tokenizer

    chars = sorted({ch for r in load_train_rows(data_dir) for ch in r.input + r.output}
                   | {ch for r in load_test_rows(data_dir) for ch in r.input} | set(course_prompt(INSTRUCTION, "")))
    texts = tuple([course_prompt(INSTRUCTION, "")] * 200 + chars)
    return build_tokenizer(len(chars) + 300, texts=texts, cjk_alone=True)


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


# The homework's Trainer hyperparameters, shared by recipes (a) and (c).
HOMEWORK_ARGS = dict(per_device_train_batch_size=4, gradient_accumulation_steps=4, num_train_epochs=1, learning_rate=3e-4,
                     warmup_steps=50, logging_steps=20, seed=42)


def epoch_figure(steps: int, seconds: float, peak: float) -> dict[str, Any]:
    """A training time on `steps` steps as a whole-epoch (65-step) figure, saying whether it was scaled."""
    return {"steps_timed": steps, "seconds_timed": seconds, "peak_gb": peak, "seconds_per_step": seconds / steps,
            "epoch_seconds": seconds / steps * 65, "epoch_seconds_is": "measured" if steps == 65 else f"scaled from {steps} steps"}


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
    args = TrainingArguments(output_dir=str(out), max_steps=steps, fp16=True, gradient_checkpointing=True, optim="adamw_torch",
                             save_strategy="no", report_to="none", disable_tqdm=True, **HOMEWORK_ARGS)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    _, seconds, peak = timed(trainer.train)
    figure = epoch_figure(steps, seconds, peak)
    model.unload()  # the LoRA layers go; the base stays for the next recipe
    return figure


def trl_training(base: torch.nn.Module, cfg: Any, tokenizer: Any, steps: int, out: Path, **overrides: Any) -> dict[str, Any]:
    """(c) TRL's SFTTrainer on prompt/completion rows (the loss on completions only, TRL's default for
    such rows) with the homework's hyperparameters and TRL's defaults otherwise."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tangpoem.model import lora_config
    from tangpoem.prompt import course_prompt

    rows = load_train_rows(cfg.data_dir, 1040)
    dataset = Dataset.from_list([{"prompt": course_prompt(r.instruction, r.input), "completion": r.output} for r in rows])
    # precision is TRL's default too (bf16 where the GPU has it), on a fresh NF4 base with bf16 norms, as a
    # careful user loads it (TRL does not run peft's k-bit preparation)
    args = SFTConfig(output_dir=str(out), max_steps=steps, save_strategy="no", report_to="none", disable_tqdm=True,
                     **{**HOMEWORK_ARGS, **overrides})
    trainer = SFTTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config(cfg))
    _, seconds, peak = timed(trainer.train)
    figure = {**epoch_figure(steps, seconds, peak), "gradient_checkpointing": args.gradient_checkpointing,
              "trl_version": __import__("trl").__version__}
    trainer.model.unload()
    return figure


def homework_generation(model: torch.nn.Module, tokenizer: Any, cfg: Any, prompts: int) -> dict[str, Any]:
    """One prompt at a time with output_scores and transformers' no_repeat_ngram_size 3, as the homework."""
    from tangpoem.generate import generation_config
    from tangpoem.tokens import encode_prompt

    rows = load_test_rows(cfg.data_dir)[:prompts]
    gen_config = generation_config(cfg, tokenizer)  # cfg forces the length (min_new_tokens): random weights never stop
    model.eval()

    def run() -> None:
        for row in rows:
            ids = torch.tensor([encode_prompt(tokenizer, row.instruction, row.input)], device="cuda")
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_config,
                           output_scores=True, return_dict_in_generate=True)

    _, seconds, peak = timed(run)
    return {"prompts_timed": prompts, "seconds_timed": seconds, "peak_gb": peak,
            "seconds_15": seconds / prompts * 15, "seconds_15_is": "measured" if prompts == 15 else f"scaled from {prompts} prompts"}


class StepClock:
    """Wall time at which every optimizer step's figures are read (the loop waits for the step's loss then,
    at the latest while the next step runs), so the first steps (capture, compilation) can be told apart
    from the steady state."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __call__(self, step: int, record: dict[str, float]) -> None:
        self.ends.append(time.perf_counter())

    def figures(self, loop_seconds: float, first_step_seconds: float, steps_per_epoch: int = 65) -> dict[str, Any]:
        """`first_step_seconds`: from the loop's start (before any capture) to step 1's figures."""
        later = [b - a for a, b in zip(self.ends, self.ends[1:])]
        steps = [first_step_seconds, *later]
        steady = sorted(steps[5:])[len(steps[5:]) // 2] if len(steps) > 5 else float("nan")
        return {"first_step_s": steps[0], "first_5_steps_s": sum(steps[:5]), "steady_step_s": steady,
                "steady_epoch_s": steady * steps_per_epoch, "after_last_step_s": loop_seconds - sum(steps),
                "step_seconds": [round(s, 4) for s in steps]}


def tangpoem_training(cfg: Any) -> tuple[dict[str, Any], Any]:
    """tangpoem's own loop on `cfg`, on its own base (loaded, and with dequantize_base dequantized)."""
    from tangpoem.train import train

    clock = StepClock()
    result, seconds, peak = timed(lambda: train(cfg, on_step_end=[clock]))
    train_seconds = result.seconds - result.timings["checkpoint_seconds"]
    epoch = {k: v for k, v in epoch_figure(len(result.history), train_seconds, peak).items() if k.startswith("epoch_")}
    # The homework's and TRL's runs save nothing (save_strategy "no"); tangpoem's loop ends by writing its
    # checkpoint (adapter and optimizer state), so the figure compared with theirs leaves that write out.
    figure = {"loop_seconds": result.seconds, "call_seconds": seconds, "peak_gb": peak, "steps": len(result.history),
              "first_loss": result.history[0]["loss"], "last_loss": result.history[-1]["loss"], **epoch,
              **result.timings, "train_seconds": train_seconds,
              "graph_shape": dataclasses.asdict(result.graph_shape) if result.graph_shape else None,
              **clock.figures(result.seconds, result.timings["first_step_seconds"])}
    return figure, result


def tangpoem_generation(model: torch.nn.Module, tokenizer: Any, cfg: Any, attempts: int = 2) -> dict[str, Any]:
    """The 15 test prompts in one batch, n-gram bans on the device; `attempts` calls (with a static cache
    each call captures its decode step as a CUDA graph; transformers' compile, which this replaces, cost the
    first call ~35-40 s)."""
    from tangpoem.generate import generate

    rows = load_test_rows(cfg.data_dir)
    out: dict[str, Any] = {"new_tokens_per_poem": cfg.max_new_tokens, "static_cache": cfg.static_cache}
    for attempt in range(attempts):
        _, seconds, peak = timed(lambda: generate(model, tokenizer, rows, cfg, progress=False))
        out[f"call_{attempt + 1}_seconds"], out["peak_gb"] = seconds, peak
    out["seconds"] = out[f"call_{attempts}_seconds"]
    return out


def profiled_training(cfg: Any, active: int = 3, wait: int = 4) -> dict[str, Any]:
    """torch.profiler over `active` steps of tangpoem's loop, after `wait` steps and one warm-up step: GPU
    kernel time and CPU time a step against the wall clock, the costliest kernels and the CPU's costliest
    (or most frequent) calls. Kernels inside a CUDA graph are listed where CUPTI traces graph replays."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    from tangpoem.train import train

    # one step more than profiled: the last step saves a checkpoint, which is no training step's cost.
    # logging_steps 1: each step is read, and the profiler stepped, as it ends (not once the next step runs,
    # which would let the window cut through a step in flight)
    cfg = load_config(None, {**cfg.to_dict(), "max_steps": wait + 1 + active + 1, "save_steps": 1000, "logging_steps": 1})
    clock = StepClock()
    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=wait, warmup=1, active=active))
    with profiler:
        train(cfg, on_step_end=[clock, lambda step, record: profiler.step()])
    averages = profiler.key_averages()
    per_step = lambda microseconds: microseconds / active / 1000  # noqa: E731  (ms a step)
    # kernels and copies (operators hold their time too; the ProfilerStep annotation is no kernel)
    kernels = [e for e in averages if e.device_type == DeviceType.CUDA and not e.key.startswith("ProfilerStep")]
    calls = [e for e in averages if e.device_type == DeviceType.CPU and not e.key.startswith("ProfilerStep")]

    def row(e: Any) -> dict[str, Any]:
        return {"name": e.key[:100], "calls_per_step": e.count / active, "gpu_ms_per_step": per_step(e.self_device_time_total),
                "cpu_ms_per_step": per_step(e.self_cpu_time_total)}

    return {
        "steps_profiled": active, "config": cfg.to_dict(),
        "wall_ms_per_step": 1000 * (clock.ends[-2] - clock.ends[-active - 2]) / active,
        "gpu_kernel_ms_per_step": per_step(sum(e.self_device_time_total for e in kernels)),
        "cpu_ms_per_step": per_step(sum(e.self_cpu_time_total for e in calls)),
        "costliest_kernels": [row(e) for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:30]],
        "costliest_cpu_calls": [row(e) for e in sorted(calls, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]],
        "most_frequent_cpu_calls": [row(e) for e in sorted(calls, key=lambda e: e.count, reverse=True)[:25]],
    }


# The main run's stages, in order (--stages picks some).
STAGES = ("train_homework", "train_trl", "t4_profile", "train_tangpoem", "generate_homework", "generate_tangpoem")

# Lever groups: (config file, overrides shared by the group, {label: overrides of one variant}). Each
# variant trains on its own fresh NF4 base; the groups compare each lever on and off in one run.
BEFORE = {"kbit_fp32_upcast": False, "answer_logits_only": True, "dequantize_base": False, "compile": False,
          "varlen_attention": False, "cuda_graphs": False, "fused_rms_norm": False, "fused_lora": False,
          "balanced_steps": False}  # the earlier groups measured shuffled steps; "balance" compares them
DEQUANTIZED = {**BEFORE, "dequantize_base": True}
GRAPHED = {**DEQUANTIZED, "varlen_attention": True, "cuda_graphs": True}
T4_SHORT = {"compute_dtype": "float16", "max_steps": 16, "save_steps": 1000}  # fp16 as on a T4; 16 steps, scaled
LEVER_GROUPS: dict[str, tuple[str, dict[str, Any], dict[str, dict[str, Any]]]] = {
    "train": ("breeze-h100", {}, {
        "packed, bf16 norms, answer logits (the previous breeze-h100)": BEFORE,
        "+ dequantized base": DEQUANTIZED,
        "+ compiled layers": {**BEFORE, "compile": True},
        "+ dequantized base + compiled layers": {**DEQUANTIZED, "compile": True},
    }),
    # CPU-overhead levers on the dequantized base (an eager step waits on the CPU launching kernels)
    "overhead": ("breeze-h100", {}, {
        "dequantized base, sdpa attention (the previous breeze-h100)": DEQUANTIZED,
        "+ varlen attention": {**DEQUANTIZED, "varlen_attention": True},
        "+ varlen attention + CUDA graphs": GRAPHED,
        "+ varlen attention + compiled layers": {**DEQUANTIZED, "varlen_attention": True, "compile": True},
    }),
    # element-wise work fused into ops PyTorch has, on breeze-h100's layout (varlen attention, CUDA graphs)
    "fused": ("breeze-h100", {}, {
        "varlen attention + CUDA graphs, no fused ops": GRAPHED,
        "+ fused RMSNorm": {**GRAPHED, "fused_rms_norm": True},
        "+ fused LoRA": {**GRAPHED, "fused_lora": True},
        "+ fused RMSNorm + fused LoRA": {**GRAPHED, "fused_rms_norm": True, "fused_lora": True},
    }),
    # breeze-h100 with the shuffled micro-batches as they come, and with their rows swapped until each holds
    # ~as many tokens (the graphs pad every micro-batch to the longest)
    "balance": ("breeze-h100", {}, {
        "breeze-h100, shuffled micro-batches": {"balanced_steps": False},
        "+ balanced micro-batches": {"balanced_steps": True},
    }),
    # breeze-colab-t4's layout (packed rows, answer logits only), norms unfused
    "t4": ("breeze-colab-t4", {**T4_SHORT, "fused_rms_norm": False}, {
        "T4: micro-batch 16, checkpointing, fp32 norms": {"micro_batch_size": 16, "gradient_checkpointing": True, "kbit_fp32_upcast": True},
        "T4: micro-batch 16, checkpointing, fp16 norms": {"micro_batch_size": 16, "gradient_checkpointing": True, "kbit_fp32_upcast": False},
        "T4: micro-batch 8, checkpointing, fp32 norms": {"micro_batch_size": 8, "gradient_checkpointing": True, "kbit_fp32_upcast": True},
        "T4: micro-batch 8, no checkpointing, fp16 norms": {"micro_batch_size": 8, "gradient_checkpointing": False, "kbit_fp32_upcast": False},
        "T4: micro-batch 4, no checkpointing, fp32 norms": {"micro_batch_size": 4, "gradient_checkpointing": False, "kbit_fp32_upcast": True},
    }),
    # breeze-colab-t4 (fp16 norms) without and with the fused RMSNorm
    "t4fused": ("breeze-colab-t4", T4_SHORT, {
        "T4 profile, no fused RMSNorm": {"fused_rms_norm": False},
        "T4 profile + fused RMSNorm": {"fused_rms_norm": True},
    }),
}


def lever_runs(groups: list[str], shape: dict[str, Any], work: Path) -> list[tuple[str, Any]]:
    """(label, config) of every variant of `groups`. Within a group no two variants may share a config:
    a lever compared with itself measures nothing (the groups may share one, e.g. a baseline)."""
    runs = []
    for group in groups:
        config_name, common, variants = LEVER_GROUPS[group]
        seen: dict[str, str] = {}
        for label, overrides in variants.items():
            cfg = load_config(config_name, {**shape, **common, **overrides, "output_dir": str(work / re.sub(r"\W+", "-", label))})
            key = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "output_dir"}, sort_keys=True)
            if key in seen:
                raise SystemExit(f"--levers {group}: variant {label!r} has the same config as {seen[key]!r}")
            seen[key] = label
            runs.append((label, cfg))
    return runs


def environment(commit: str) -> dict[str, str]:
    """The device, the commit and the versions a results file records."""
    import bitsandbytes
    import peft
    import transformers

    return {"device": torch.cuda.get_device_name(), "commit": commit, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__}


def results_file(results_dir: Path, suffix: str) -> Path:
    """<results_dir>/<this GPU's name, lower-case, dashes><suffix>.json"""
    return results_dir / (re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower() + suffix + ".json")


def release() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-speed"))
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--baseline-steps", type=int, default=65)
    parser.add_argument("--trl-steps", type=int, default=65)
    parser.add_argument("--baseline-prompts", type=int, default=15)
    parser.add_argument("--t4-steps", type=int, default=65)
    parser.add_argument("--levers", default="",
                        help=f"only tangpoem's recipes, each lever on and off: any of {','.join([*LEVER_GROUPS, 'generate'])}")
    parser.add_argument("--stages", default="", help="only these stages of the main run (comma-separated keys), e.g. train_trl,train_tangpoem")
    parser.add_argument("--build-only", action="store_true", help="only write the Breeze-shaped checkpoint (for DDP runs)")
    parser.add_argument("--profile", action="store_true", help="only profile breeze-h100's training steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --profile: config keys to change from breeze-h100")
    args = parser.parse_args()
    chosen = [g for g in args.levers.split(",") if g]
    if unknown := set(chosen) - {*LEVER_GROUPS, "generate"}:
        parser.error(f"--levers: unknown group(s) {', '.join(sorted(unknown))}")
    if unknown := {s for s in args.stages.split(",") if s} - set(STAGES):
        parser.error(f"--stages: unknown stage(s) {', '.join(sorted(unknown))}; stages: {', '.join(STAGES)}")
    if args.overrides and not args.profile:
        parser.error("--set goes with --profile")
    ckpt = args.work / "breeze-shape"
    # random weights never stop: min_new_tokens forces every poem to 128 new tokens
    shape = {"model_name_or_path": str(ckpt), "data_dir": args.data_dir, "max_new_tokens": 128, "min_new_tokens": 128}
    runs = lever_runs([g for g in chosen if g in LEVER_GROUPS], shape, args.work)  # refused here, before the checkpoint

    from tangpoem.decoding import merge_lora_dequantized
    from tangpoem.model import load_adapter, load_base_model, load_tokenizer
    from tangpoem.train import pick_checkpoint

    results: dict[str, Any] = {
        **environment(args.commit),
        "model": "random-initialised Mistral of Breeze-7B's shape, NF4 double quantization",
        "tokenizer": "stand-in: BPE for the prompt's ASCII, one token per Chinese character",
        "figures": {}, "errors": {},
    }
    suffix = ("-levers-" + args.levers.replace(",", "-") if args.levers else "-" + args.stages.replace(",", "-") if args.stages
              else "-profile" if args.profile else "")
    out_file = results_file(args.results_dir, suffix)
    figures = results["figures"]

    def stage(key: str, fn: Callable[[], Any]) -> Any:
        if args.stages and key not in args.stages.split(","):
            return None
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

    shutil.rmtree(args.work, ignore_errors=True)
    tokenizer = stand_in_tokenizer(args.data_dir)
    figures["parameters"], figures["build_seconds"], _ = timed(lambda: build_checkpoint(ckpt, tokenizer))
    if args.build_only:
        print(f"wrote {ckpt}")
        return
    fast = load_config("breeze-h100", {**shape, "output_dir": str(args.work / "b")})
    tokenizer = load_tokenizer(fast)
    results["config_breeze_h100"] = fast.to_dict()

    if args.profile:
        from tangpoem.config import parse_set

        profiled = load_config("breeze-h100", {**fast.to_dict(), **parse_set(args.overrides)})
        figures["profile"] = stage("profile", lambda: profiled_training(profiled))
        atomic_write_json(out_file, results)
        return

    if args.levers:  # tangpoem's recipes with each lever on or off; each run loads its own NF4 base
        figures["levers"] = {}
        for label, cfg in runs:

            def lever(cfg=cfg) -> dict[str, Any]:
                figure, result = tangpoem_training(cfg)
                result.model = None  # release the model before the next run
                return figure

            figures["levers"][label] = stage(f"lever: {label}", lever)
            release()
        if "generate" in chosen:  # timing does not depend on the weights: fresh (zero-delta) adapters
            from tangpoem.model import add_lora

            merged = merge_lora_dequantized(add_lora(load_base_model(fast), fast), torch.bfloat16)
            for label, static in (("generate: merged, dynamic cache", False), ("generate: merged, static cache, decode step as a CUDA graph", True)):
                gen_cfg = load_config(None, {**fast.to_dict(), "static_cache": static})
                figures["levers"][label] = stage(label, lambda gen_cfg=gen_cfg: tangpoem_generation(merged, tokenizer, gen_cfg, 3))
        atomic_write_json(out_file, results)
        return

    base, figures["load_nf4_seconds"], figures["nf4_loaded_gb"] = timed(lambda: load_base_model(fast))
    # (a) the homework's recipe on the shared NF4 base (it unloads its LoRA layers afterwards; its k-bit
    # preparation leaves the base's norms, embeddings and lm_head in fp32, as the homework's generation had them)
    figures["train_homework"] = stage("train_homework", lambda: homework_training(base, fast, tokenizer, args.baseline_steps, args.work / "a"))

    def trl_stage() -> dict[str, Any]:  # (c) on its own base: the homework's fp32 casts are not TRL's layout
        own_base = load_base_model(fast)
        try:
            return trl_training(own_base, fast, tokenizer, args.trl_steps, args.work / "c")
        finally:
            del own_base
            release()

    figures["train_trl"] = stage("train_trl", trl_stage)

    # the breeze-colab-t4 profile, as on a T4: fp16 autocast, no bf16, no compiled kernels
    t4 = load_config("breeze-colab-t4", {**shape, "output_dir": str(args.work / "t4"), "max_steps": args.t4_steps,
                                         "compute_dtype": "float16", "save_steps": 1000})
    results["config_breeze_colab_t4"] = t4.to_dict()

    def t4_profile() -> dict[str, Any]:
        # its own NF4 base: the homework's prepare_model_for_kbit_training has cast the shared base's norms,
        # embeddings and lm_head to fp32 in place, which the T4 profile (fp16 norms) must not inherit
        figure, result = tangpoem_training(t4)
        result.model = None
        release()
        return figure

    figures["t4_profile"] = stage("t4_profile", t4_profile)

    # (b) tangpoem's GPU recipe (breeze-h100): same rows, 16 rows a step, 65 steps, same schedule; own base
    trained: dict[str, Any] = {}

    def fast_training() -> dict[str, Any]:
        figure, result = tangpoem_training(fast)
        trained["model"] = result.model
        return figure

    figures["train_tangpoem"] = stage("train_tangpoem", fast_training)

    # generation with the adapter (b) trained: the homework's way on the NF4 base, then tangpoem's
    # (LoRA merged into dequantized bf16 weights, one batch, n-gram bans on the device, static cache)
    if trained.get("model") is not None:
        def homework_generate() -> dict[str, Any]:
            tuned = load_adapter(base, str(pick_checkpoint(fast.output_dir)))
            try:
                return homework_generation(tuned, tokenizer, fast, args.baseline_prompts)
            finally:
                tuned.unload()

        figures["generate_homework"] = stage("generate_homework", homework_generate)

        def fast_generation() -> dict[str, Any]:
            merged, merge_seconds, _ = timed(lambda: merge_lora_dequantized(trained.pop("model"), torch.bfloat16))
            return {"merge_seconds": merge_seconds, **tangpoem_generation(merged, tokenizer, fast, 3)}

        figures["generate_tangpoem"] = stage("generate_tangpoem", fast_generation)

    def ratio(a: str, a_key: str, b: str, b_key: str) -> float | None:
        if figures.get(a) and figures.get(b):
            return figures[a][a_key] / figures[b][b_key]
        return None

    figures["train_speedup_vs_homework"] = ratio("train_homework", "epoch_seconds", "train_tangpoem", "train_seconds")
    figures["train_speedup_vs_trl"] = ratio("train_trl", "epoch_seconds", "train_tangpoem", "train_seconds")
    figures["generate_speedup"] = ratio("generate_homework", "seconds_15", "generate_tangpoem", "seconds")
    figures["t4_profile_speedup"] = ratio("train_homework", "epoch_seconds", "t4_profile", "epoch_seconds")
    atomic_write_json(out_file, results)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
