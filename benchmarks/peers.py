"""The recipes tangpoem is compared with, each run in a process of its own (its own NF4 base, its own peak memory):

    homework           (a) the course notebook's training as written: its k-bit preparation, LoRA, TrainingArguments
                           (plus max_steps), DataCollatorForLanguageModeling, rows padded to 256, HF Trainer
    homework-generate  the notebook's generation: the saved adapter on a fresh NF4 base, one prompt at a time
    trl                (c) TRL's SFTTrainer on prompt/completion rows with the homework's hyperparameters
    unsloth            (d) Unsloth's FastLanguageModel (its NF4 base, "unsloth" gradient checkpointing, LoRA
                           dropout 0 as Unsloth recommends, padding-free rows) through TRL, in --dtype bf16 or fp16

    python benchmarks/peers.py RECIPE --checkpoint DIR --data-dir DIR --work DIR --json FILE [--steps 65]
        [--prompts 3] [--adapter DIR] [--dtype bf16|fp16] [--smoke]

The course notebook is the GenAI 2024 HW5 Colab notebook (linked from github.com/CheeEn-Yu/GenAI-Hw5; read here in
its public mirror, Hoper-J/AI-Guide-and-Demos-zh_CN, "Demos/06. 尝试微调 LLM：让它会写唐诗.ipynb"). Where today's
libraries refuse its code, the nearest equivalent is used and said so in the figures ("as_written_except").
--smoke runs the same code on the CPU with a tiny model, in float32 (no NF4, no fp16): a check of the plumbing,
not a figure. The figures go to --json, with the versions of the libraries the recipe used.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from measure import peak_memory, timed, versions, write_figures

HOMEWORK_TARGETS = ["q_proj", "up_proj", "o_proj", "k_proj", "down_proj", "gate_proj", "v_proj"]  # the notebook's order
CUTOFF_LEN = 256


def course_rows(data_dir: str, count: int = 1040) -> list[dict[str, str]]:
    """The notebook's training rows: the first `count` of Tang_training_data.json."""
    return json.loads((Path(data_dir) / "Tang_training_data.json").read_text(encoding="utf-8"))[:count]


def nf4_config(compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_nf4(checkpoint: str, smoke: bool, **kwargs: Any) -> torch.nn.Module:
    """The notebook's load: NF4 with double quantization, bf16 compute, on GPU 0 (float32 on the CPU with --smoke)."""
    from transformers import AutoModelForCausalLM

    if smoke:
        return AutoModelForCausalLM.from_pretrained(checkpoint, **{**kwargs, "dtype": torch.float32})
    return AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=nf4_config(torch.bfloat16), device_map={"": 0}, **kwargs)


def padded_row(tokenizer: Any, row: dict[str, str]) -> dict[str, list[int]]:
    """The notebook's `generate_training_data`, step for step: prompt + " " + output + "</s>", padded with
    padding="max_length" to CUTOFF_LEN + 1 and cut to CUTOFF_LEN; the prompt's length is measured with the
    same padding (so it is always CUTOFF_LEN: the collator below rebuilds the labels anyway); the attention
    mask is all ones, pads included."""
    from tangpoem.prompt import course_prompt

    prompt = course_prompt(row["instruction"], row["input"])
    prompt_length = len(tokenizer(prompt, truncation=True, max_length=CUTOFF_LEN + 1, padding="max_length")["input_ids"]) - 1
    tokens = tokenizer(prompt + " " + row["output"] + "</s>", truncation=True, max_length=CUTOFF_LEN + 1,
                       padding="max_length")["input_ids"][:-1]
    return {"input_ids": tokens, "labels": [-100] * prompt_length + tokens[prompt_length:], "attention_mask": [1] * len(tokens)}


def homework(args: argparse.Namespace) -> dict[str, Any]:
    """(a) The notebook's training cell as written, with max_steps added."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    torch.manual_seed(42)  # the notebook's seed cell
    (model, tokenizer), load_seconds = timed(lambda: (load_nf4(args.checkpoint, args.smoke, low_cpu_mem_usage=True),
                                                      AutoTokenizer.from_pretrained(args.checkpoint, add_eos_token=True)))
    tokenizer.pad_token = tokenizer.eos_token
    # peft removed the notebook's prepare_model_for_int8_training; it was this call with its defaults
    # (freeze, fp32 norms/embeddings/lm_head, gradient checkpointing with input gradients)
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=HOMEWORK_TARGETS, lora_dropout=0.05,
                                             bias="none", task_type="CAUSAL_LM"))
    tokenizer.pad_token_id = 0
    rows = course_rows(args.data_dir)
    random.Random(42).shuffle(rows)  # the notebook's data["train"].shuffle() (unseeded there)
    train_data = [padded_row(tokenizer, r) for r in rows]
    precision = {"use_cpu": True} if args.smoke else {"fp16": True}
    training_args = TrainingArguments(
        per_device_train_batch_size=4, gradient_accumulation_steps=4, warmup_steps=50, num_train_epochs=1,
        learning_rate=3e-4, logging_steps=20, save_strategy="steps", save_steps=65, output_dir=str(args.work / "exp1"),
        save_total_limit=3, ddp_find_unused_parameters=None, report_to="none", max_steps=args.steps, **precision)
    trainer = Trainer(model=model, train_dataset=train_data, eval_dataset=None, args=training_args,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    model.config.use_cache = False
    output, seconds = timed(trainer.train)
    return {"recipe": "the course notebook's training as written", "steps": trainer.state.global_step, "seconds": seconds,
            "load_seconds": load_seconds, "train_loss": output.training_loss, "last_loss": _last_loss(trainer),
            "gradient_checkpointing": checkpointing_on(model),
            "checkpoints": sorted(p.name for p in (args.work / "exp1").glob("checkpoint-*")),
            "as_written_except": ["max_steps added", "report_to='none' (the notebook's None meant every installed "
                                  "integration in transformers 4.38; transformers 5 refuses None)", "device_map={'': 0} "
                                  "(the notebook's load put the 4-bit model on GPU 0 by itself)", "rows shuffled with a seed",
                                  "torch.compile(model) after the Trainer was built left out: the Trainer holds the "
                                  "uncompiled model, so it never ran"],
            **({"smoke": "CPU, float32, no NF4, no fp16"} if args.smoke else {})}


def checkpointing_on(model: torch.nn.Module) -> bool:
    """Whether any layer recomputes its activations in the backward pass (what the k-bit preparation turned on)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _last_loss(trainer: Any) -> float | None:
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return losses[-1] if losses else None


def homework_generate(args: argparse.Namespace) -> dict[str, Any]:
    """The notebook's test cells: a fresh NF4 base with the saved adapter, then `evaluate` for each test poem,
    one at a time, with output_scores. Random weights never stop: min_new_tokens makes every poem 128 tokens
    (tangpoem's figure is forced the same way)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer, GenerationConfig

    def load() -> tuple[Any, Any, str]:
        base = load_nf4(args.checkpoint, args.smoke)
        if args.adapter and Path(args.adapter).is_dir():
            return PeftModel.from_pretrained(base, args.adapter), AutoTokenizer.from_pretrained(args.checkpoint), str(args.adapter)
        fresh = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=HOMEWORK_TARGETS, task_type="CAUSAL_LM"))
        return fresh.eval(), AutoTokenizer.from_pretrained(args.checkpoint), "fresh (no saved adapter of (a) found)"

    (model, tokenizer, adapter), load_seconds = timed(load)
    config = GenerationConfig(do_sample=True, temperature=0.1, num_beams=1, top_p=0.3, no_repeat_ngram_size=3, pad_token_id=2,
                              min_new_tokens=128)
    tests = json.loads((Path(args.data_dir) / "Tang_testing_data.json").read_text(encoding="utf-8"))[: args.prompts]
    device = "cpu" if args.smoke else "cuda"

    def run() -> None:
        from tangpoem.prompt import course_prompt

        for test in tests:
            input_ids = tokenizer(course_prompt(test["instruction"], test["input"]), return_tensors="pt")["input_ids"].to(device)
            model.generate(input_ids=input_ids, generation_config=config, return_dict_in_generate=True, output_scores=True,
                           max_new_tokens=128)

    _, seconds = timed(run)
    return {"recipe": "the course notebook's generation", "adapter": adapter, "load_seconds": load_seconds,
            "prompts_timed": len(tests), "seconds_timed": seconds, "seconds_15": seconds / len(tests) * 15,
            "seconds_15_is": "measured" if len(tests) == 15 else f"scaled from {len(tests)} prompts",
            "new_tokens_per_poem": 128}


def sft_dataset(data_dir: str) -> Any:
    """The course rows as TRL's prompt/completion rows (the loss on the completion only, TRL's default)."""
    from datasets import Dataset

    from tangpoem.prompt import course_prompt

    return Dataset.from_list([{"prompt": course_prompt(r["instruction"], r["input"]), "completion": r["output"]}
                              for r in course_rows(data_dir)])


def sft_args(args: argparse.Namespace, **precision: Any) -> Any:
    """The homework's hyperparameters in TRL's SFTConfig; TRL's defaults otherwise; nothing saved."""
    from trl import SFTConfig

    if args.smoke:
        precision = {"use_cpu": True, "bf16": False, "fp16": False}
    return SFTConfig(output_dir=str(args.work / "sft"), max_steps=args.steps, per_device_train_batch_size=4,
                     gradient_accumulation_steps=4, num_train_epochs=1, learning_rate=3e-4, warmup_steps=50,
                     logging_steps=20, seed=42, save_strategy="no", report_to="none", **precision)


def trl(args: argparse.Namespace) -> dict[str, Any]:
    """(c) TRL's SFTTrainer with a LoRA config, on an NF4 base (bf16 compute) loaded as TRL's docs show."""
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    (model, tokenizer), load_seconds = timed(lambda: (load_nf4(args.checkpoint, args.smoke, dtype=torch.bfloat16),
                                                      AutoTokenizer.from_pretrained(args.checkpoint)))
    tokenizer.pad_token = tokenizer.unk_token  # not EOS, which the loss would then mask
    training_args = sft_args(args)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=sft_dataset(args.data_dir), processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=HOMEWORK_TARGETS,
                                                bias="none", task_type="CAUSAL_LM"))
    output, seconds = timed(trainer.train)
    return {"recipe": "TRL SFTTrainer", "steps": trainer.state.global_step, "seconds": seconds, "load_seconds": load_seconds,
            "train_loss": output.training_loss, "last_loss": _last_loss(trainer), "bf16": training_args.bf16, "fp16": training_args.fp16,
            "gradient_checkpointing": training_args.gradient_checkpointing, "padding_free": training_args.padding_free}


def unsloth(args: argparse.Namespace) -> dict[str, Any]:
    """(d) Unsloth as its notebooks use it, with the homework's rows and hyperparameters."""
    import unsloth  # noqa: F401  (first: it patches transformers, peft and TRL as it is imported)
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    def load() -> tuple[Any, Any]:
        model, tokenizer = FastLanguageModel.from_pretrained(args.checkpoint, max_seq_length=CUTOFF_LEN, load_in_4bit=True, dtype=dtype)
        model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0, target_modules=HOMEWORK_TARGETS,
                                                 bias="none", use_gradient_checkpointing="unsloth", random_state=42)
        return model, tokenizer

    (model, tokenizer), load_seconds = timed(load)
    training_args = sft_args(args, max_length=CUTOFF_LEN, bf16=args.dtype == "bf16", fp16=args.dtype == "fp16")
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=sft_dataset(args.data_dir), processing_class=tokenizer)
    output, seconds = timed(trainer.train)
    return {"recipe": f"Unsloth {args.dtype}", "steps": trainer.state.global_step, "seconds": seconds, "load_seconds": load_seconds,
            "train_loss": output.training_loss, "last_loss": _last_loss(trainer), "dtype": args.dtype, "lora_dropout": 0, "gradient_checkpointing": "unsloth",
            "padding_free": trainer.args.padding_free}


RECIPES = {"homework": homework, "homework-generate": homework_generate, "trl": trl, "unsloth": unsloth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", required=True, help="where the figures go")
    parser.add_argument("--steps", type=int, default=65)
    parser.add_argument("--prompts", type=int, default=15)
    parser.add_argument("--adapter", help="homework-generate: the adapter (a) saved")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, float32: the plumbing only")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures = RECIPES[args.recipe](args)
    write_figures(args.json, {**figures, **peak_memory(), "in_process_seconds": time.perf_counter() - started,
                              "versions": versions()})


if __name__ == "__main__":
    main()
