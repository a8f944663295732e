"""Each lever of tangpoem's training on and off in one run, and where a step's time goes (torch.profiler).

    python benchmarks/gpu_levers.py --data-dir DIR --levers train,overhead,fused,balance,t4,t4fused,liger,generate [--commit SHA]
    python benchmarks/gpu_levers.py --data-dir DIR --profile [--set key=value ...]

Comparisons inside tangpoem (`tangpoem.train.train` called in this process, each variant on its own fresh NF4 base),
not figures of the users' path: those are benchmarks/gpu_speed.py's. The model is benchmarks/breeze_shape.py's
checkpoint (written once, reused). Figures go to <results-dir>/<gpu>-levers-<groups>.json or <gpu>-profile.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from breeze_shape import build_checkpoint
from measure import environment, results_file
from tangpoem.config import load_config
from tangpoem.data import load_test_rows
from tangpoem.io import atomic_write_json


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak GB allocated during the call)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 1e9


def epoch_figure(steps: int, seconds: float, peak: float) -> dict[str, Any]:
    """A training time on `steps` steps as a whole-epoch (65-step) figure, saying whether it was scaled."""
    return {"steps_timed": steps, "seconds_timed": seconds, "peak_gb": peak, "seconds_per_step": seconds / steps,
            "epoch_seconds": seconds / steps * 65, "epoch_seconds_is": "measured" if steps == 65 else f"scaled from {steps} steps"}


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
    # train_seconds leaves out the checkpoint writes (adapter and optimizer state): the variants compare steps
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


def profiled_generation(model: torch.nn.Module, tokenizer: Any, cfg: Any, tokens: int = 16) -> dict[str, Any]:
    """Where a generated token's time goes: generation's steps as tangpoem sets them up (fast.decode.graphed_sampling)
    run one by one (graphs off, so that every kernel is traced) for `tokens` new tokens of the 15 test prompts,
    under torch.profiler; then the replayed sampler timed with 16 rows (the 15 prompts and the first again)
    against 15, and with sdpa's math kernel alone against tangpoem's choice (flash, memory-efficient, math).
    (At f3608d2, the committed profile, the sampler had neither the grouped decode attention nor fused norms.)"""
    from torch.autograd import DeviceType
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    from tangpoem.fast.decode import graphed_sampling
    from tangpoem.generate import fast_generation_config, left_pad
    from tangpoem.tokens import encode_prompt

    prompts = [encode_prompt(tokenizer, r.instruction, r.input, cfg.prompt_mode) for r in load_test_rows(cfg.data_dir)]
    _, processors = fast_generation_config(cfg, tokenizer)
    chosen = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def run(rows: list[list[int]], new_tokens: int, graphs: bool, backends: list[Any]) -> None:
        """tangpoem's generation as generate() sets it up (grouped decode attention, fused norms), graphs on or off."""
        batch = {k: v.cuda() for k, v in left_pad(rows, tokenizer.pad_token_id).items()}
        longest = batch["input_ids"].shape[1] + new_tokens
        with torch.no_grad(), sdpa_kernel(backends), graphed_sampling(model, processors, new_tokens, new_tokens, cfg.do_sample,
                                                                      tokenizer.eos_token_id, tokenizer.pad_token_id, longest) as sampler:
            assert sampler is not None, "no GraphedSampler for this model (needs sdpa, no 4-bit layers, no short window)"
            sampler.graphs = graphs
            sampler(**batch)

    run(prompts, 4, False, chosen)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        run(prompts, tokens, False, chosen)
    kernels = [e for e in profiler.key_averages() if e.device_type == DeviceType.CUDA]
    per_token = lambda microseconds: microseconds / tokens / 1000  # noqa: E731  (ms a token, the prompt's forward included)
    out: dict[str, Any] = {
        "tokens_profiled": tokens, "gpu_kernel_ms_per_token": per_token(sum(e.self_device_time_total for e in kernels)),
        "costliest_kernels": [{"name": e.key[:100], "calls_per_token": e.count / tokens, "gpu_ms_per_token": per_token(e.self_device_time_total)}
                              for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:25]]}
    for label, rows, backends in (("15 rows", prompts, chosen), ("16 rows", [*prompts, prompts[0]], chosen),
                                  ("15 rows, sdpa math only", prompts, [SDPBackend.MATH])):
        run(rows, 8, True, backends)  # this shape's first call, with its first-use costs, goes untimed
        _, seconds, _ = timed(lambda rows=rows, backends=backends: run(rows, 128, True, backends))
        out[f"replayed, 128 tokens, {label}: seconds"] = seconds
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


# liger-kernel's Triton kernels on breeze-h100 (under its CUDA graphs): each variant's kernels are put into
# transformers' Mistral module before its model is built, and taken out after it. Before training, each kernel
# runs once forward and backward on the model's widths (`compile_liger`), so that Triton compiles it outside a
# CUDA-graph capture; that time is the variant's `compile_seconds`. The first variant with a kernel compiles it
# into an empty Triton cache, as on a fresh machine; later variants reuse what this process compiled.
# Liger's fused linear cross-entropy is left out: it reads the count of targets on the CPU (`.item()`), which a
# captured step cannot do, and breeze-h100 already runs lm_head on the answer positions only.
LIGER_VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "breeze-h100": ({}, ()),
    "+ Liger SwiGLU and RoPE, compiled in the run (empty Triton cache)": ({}, ("swiglu", "rope")),
    "+ Liger SwiGLU and RoPE, already compiled": ({}, ("swiglu", "rope")),
    "+ Liger SwiGLU, RoPE and RMSNorm (instead of torch's fused RMSNorm), RMSNorm compiled in the run": (
        {"fused_rms_norm": False}, ("swiglu", "rope", "rms_norm")),
    "breeze-h100 again (the first run of a process pays one-off set-up)": ({}, ()),
}
LIGER_NAMES = {"swiglu": "MistralMLP", "rope": "apply_rotary_pos_emb", "rms_norm": "MistralRMSNorm"}


@contextlib.contextmanager
def liger_kernels(kernels: tuple[str, ...]) -> Iterator[None]:
    """Within the block, Mistral models built by transformers use liger-kernel's `kernels` (of LIGER_NAMES)."""
    from transformers.models.mistral import modeling_mistral

    saved = {name: getattr(modeling_mistral, name) for name in LIGER_NAMES.values()}
    try:
        if kernels:
            from liger_kernel.transformers import apply_liger_kernel_to_mistral

            apply_liger_kernel_to_mistral(cross_entropy=False, fused_linear_cross_entropy=False,
                                          **{kernel: kernel in kernels for kernel in LIGER_NAMES})
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_mistral, name, value)


def compile_liger(kernels: tuple[str, ...], checkpoint: Path, tokens: int = 64) -> float:
    """Seconds to run each of `kernels` (as patched into transformers' Mistral module) once forward and backward
    on bf16 tensors of the checkpoint's widths (the modules are built before the clock starts); Triton specializes
    on those widths, not on the number of tokens."""
    from transformers import AutoConfig
    from transformers.models.mistral import modeling_mistral

    config = AutoConfig.from_pretrained(checkpoint)
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    mlp = modeling_mistral.MistralMLP(config).to(**bf16) if "swiglu" in kernels else None
    norm = modeling_mistral.MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps).to(**bf16) if "rms_norm" in kernels else None
    hidden = torch.randn(1, tokens, config.hidden_size, **bf16, requires_grad=True)
    query = torch.randn(1, heads, tokens, head_dim, **bf16, requires_grad=True)
    key = torch.randn(1, config.num_key_value_heads, tokens, head_dim, **bf16, requires_grad=True)
    cos, sin = torch.randn(1, tokens, head_dim, **bf16), torch.randn(1, tokens, head_dim, **bf16)

    def run() -> None:
        outputs = [mlp(hidden)] if mlp is not None else []
        outputs += [norm(hidden)] if norm is not None else []
        outputs += modeling_mistral.apply_rotary_pos_emb(query, key, cos, sin) if "rope" in kernels else []
        torch.stack([o.float().sum() for o in outputs]).sum().backward()

    return timed(run)[1]


def liger_runs(shape: dict[str, Any], work: Path) -> list[tuple[str, Any, tuple[str, ...]]]:
    return [(label, load_config("breeze-h100", {**shape, **overrides, "output_dir": str(work / f"liger-{i}")}), kernels)
            for i, (label, (overrides, kernels)) in enumerate(LIGER_VARIANTS.items())]


OTHER_GROUPS = ("liger", "generate", "generate-profile")


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
    parser.add_argument("--levers", default="", help=f"each lever on and off: any of {','.join([*LEVER_GROUPS, *OTHER_GROUPS])}")
    parser.add_argument("--profile", action="store_true", help="only profile breeze-h100's training steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --profile: config keys to change from breeze-h100")
    args = parser.parse_args()
    chosen = [g for g in args.levers.split(",") if g]
    if unknown := set(chosen) - {*LEVER_GROUPS, *OTHER_GROUPS}:
        parser.error(f"--levers: unknown group(s) {', '.join(sorted(unknown))}")
    if not chosen and not args.profile:
        parser.error("say --levers GROUPS or --profile")
    if args.overrides and not args.profile:
        parser.error("--set goes with --profile")
    ckpt = args.work / "breeze-shape"
    # random weights never stop: min_new_tokens forces every poem to 128 new tokens
    shape = {"model_name_or_path": str(ckpt), "data_dir": args.data_dir, "max_new_tokens": 128, "min_new_tokens": 128}
    runs = [(label, cfg, ()) for label, cfg in lever_runs([g for g in chosen if g in LEVER_GROUPS], shape, args.work)]
    if "liger" in chosen:
        # before anything imports Triton: every Liger kernel is compiled in this run, none read from an earlier one
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")
        runs += liger_runs(shape, args.work)
    build = build_checkpoint(ckpt, args.data_dir)
    fast = load_config("breeze-h100", {**shape, "output_dir": str(args.work / "b")})
    results: dict[str, Any] = {**environment(args.commit), "build": build, "config_breeze_h100": fast.to_dict(),
                               "figures": {}, "errors": {}}
    out_file = results_file(args.results_dir, "-profile" if args.profile else "-levers-" + "-".join(chosen))

    def stage(key: str, fn: Callable[[], Any]) -> Any:
        print(f"--- {key}", flush=True)
        try:
            return fn()
        except Exception as e:  # record and go on: one broken variant must not lose the others' figures
            results["errors"][key] = f"{type(e).__name__}: {e}"
            return None
        finally:
            atomic_write_json(out_file, json.loads(json.dumps(results, default=str)))

    if args.profile:
        from tangpoem.config import parse_set

        profiled = load_config("breeze-h100", {**fast.to_dict(), **parse_set(args.overrides)})
        results["figures"]["profile"] = stage("profile", lambda: profiled_training(profiled))
        atomic_write_json(out_file, json.loads(json.dumps(results, default=str)))
        return
    for label, cfg, kernels in runs:
        def lever(cfg=cfg, kernels=kernels) -> dict[str, Any]:
            with liger_kernels(kernels):
                compiled = {"liger_kernels": list(kernels), "compile_seconds": compile_liger(kernels, ckpt)} if kernels else {}
                figure, result = tangpoem_training(cfg)
            result.model = None  # release the model before the next run
            return {**figure, **compiled}

        results["figures"][label] = stage(f"lever: {label}", lever)
        release()
    if {"generate", "generate-profile"} & set(chosen):  # timing does not depend on the weights: fresh adapters
        def record(label: str, fn: Callable[[], Any]) -> None:
            results["figures"][label] = stage(label, fn)

        generation_levers(chosen, fast, record)
    atomic_write_json(out_file, json.loads(json.dumps(results, default=str)))


def generation_levers(chosen: list[str], fast: Any, record: Callable[[str, Callable[[], Any]], None]) -> None:
    """The generate and generate-profile groups, each variant on an NF4 base with a fresh (zero-delta) adapter;
    `record(label, fn)` runs one as a stage and keeps its figure."""
    from tangpoem.fast.dense import dequantize_4bit_layers, merge_lora_dequantized
    from tangpoem.model import add_lora, load_base_model, load_tokenizer

    static, dynamic = (load_config(None, {**fast.to_dict(), "static_cache": on}) for on in (True, False))
    tokenizer = load_tokenizer(fast)
    if "generate-profile" in chosen:
        merged = merge_lora_dequantized(add_lora(load_base_model(fast), fast), torch.bfloat16)
        record("generate: merged, where a token's time goes", lambda: profiled_generation(merged, tokenizer, static))
        del merged
        release()
    if "generate" in chosen:
        apart = add_lora(load_base_model(fast), fast)  # the app's layout: the adapter beside the dense weights
        dequantize_4bit_layers(apart, torch.bfloat16)
        record("generate: adapter apart, GraphedSampler", lambda: tangpoem_generation(apart, tokenizer, static, 3))
        del apart
        release()
        merged = merge_lora_dequantized(add_lora(load_base_model(fast), fast), torch.bfloat16)
        for label, run in (("generate: merged, dynamic cache", lambda: tangpoem_generation(merged, tokenizer, dynamic, 2)),
                           ("generate: merged, GraphedSampler", lambda: tangpoem_generation(merged, tokenizer, static, 3))):
            record(label, run)


if __name__ == "__main__":
    main()
