"""The benchmark's model: a random-initialised checkpoint of Breeze-7B's exact shape, written to disk once.

Speed and memory do not depend on the weights' values, and the hub is out of reach on the GPU machine. Tokens
come from a stand-in tokenizer: BPE merges for the prompt's ASCII, one token per Chinese character (Breeze's
own tokenizer is out of reach). `--tiny` writes the same kind of checkpoint at a toy size, for CPU smoke runs.

    python benchmarks/breeze_shape.py CHECKPOINT_DIR --data-dir DIR [--tiny] [--json FILE]

The checkpoint is written whole or not at all; an existing complete one is reused (a second command on a
warm machine skips the ~15 GB write).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

BREEZE_SHAPE = dict(vocab_size=61952, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768)
# the same architecture at a size a 2-core CPU trains in seconds (smoke runs of every script path)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024)
DONE_FILE = "breeze_shape.json"  # written last: its presence means the checkpoint is complete


def stand_in_tokenizer(data_dir: str) -> Any:
    """ASCII words merged as a 7B tokenizer would; every Chinese character (and full-width mark) one token.
    Llama-style otherwise: ▁ word marks, BOS added, no pad token; <unk>, <s>, </s> are ids 0, 1, 2 as Breeze's."""
    from tangpoem.data import load_test_rows, load_train_rows
    from tangpoem.prompt import INSTRUCTION, course_prompt
    from tangpoem.tiny import build_tokenizer

    chars = sorted({ch for r in load_train_rows(data_dir) for ch in r.input + (r.output or "")}
                   | {ch for r in load_test_rows(data_dir) for ch in r.input} | set(course_prompt(INSTRUCTION, "")))
    texts = tuple([course_prompt(INSTRUCTION, "")] * 200 + chars)
    return build_tokenizer(len(chars) + 300, texts=texts, cjk_alone=True)


def build_checkpoint(path: Path, data_dir: str, tiny: bool = False) -> dict[str, Any]:
    """Write (or reuse) the checkpoint at `path`: bf16 weights built on the GPU, or fp32 on the CPU for `tiny`."""
    from transformers import MistralConfig, MistralForCausalLM

    from tangpoem.io import atomic_dir, atomic_write_json

    if (path / DONE_FILE).is_file():
        return {**json.loads((path / DONE_FILE).read_text()), "reused": True, "seconds": 0.0}
    started = time.perf_counter()
    tokenizer = stand_in_tokenizer(data_dir)
    shape = {**TINY_SHAPE, "vocab_size": len(tokenizer)} if tiny else BREEZE_SHAPE
    config = MistralConfig(**shape, sliding_window=None, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    device, dtype = ("cpu", torch.float32) if tiny else ("cuda", torch.bfloat16)
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = MistralForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    about = {"shape": "tiny (CPU smoke)" if tiny else "Breeze-7B", "parameters": sum(p.numel() for p in model.parameters()),
             "dtype": str(dtype).removeprefix("torch."), "vocab_size": shape["vocab_size"], "tokenizer_tokens": len(tokenizer)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / DONE_FILE, about)
    return {**about, "reused": False, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tiny", action="store_true", help="a toy-sized model on the CPU (smoke runs)")
    parser.add_argument("--json", help="where the figures go (else printed)")
    args = parser.parse_args()
    figures = build_checkpoint(args.checkpoint, args.data_dir, args.tiny)
    if args.json:
        from measure import write_figures

        write_figures(args.json, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
