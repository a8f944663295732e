"""tangpoem-nano: a small pre-trained Tang-poem model that ships inside the package (tangpoem/nano_model/).

A Mistral-architecture model (every code path but NF4 is the one Breeze takes) with one token per
character. How it was made, from the cleaned 全唐詩 corpus, is in scripts/pretrain_nano.py (with
scripts/nano_corpus.py) and docs/nano.md; this module only loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tangpoem.errors import InputError

NANO_NAME = "tangpoem-nano"
NANO_DIR = Path(__file__).parent / "nano_model"  # config.json, model.safetensors, tokenizer.json


def _require_weights() -> None:
    if not (NANO_DIR / "model.safetensors").is_file():
        raise InputError(f"{NANO_DIR}: the {NANO_NAME} weights are not in this installation")


def load_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    _require_weights()
    return PreTrainedTokenizerFast.from_pretrained(NANO_DIR)


def load_model() -> torch.nn.Module:
    """The packaged model in float32 (it ships in float16 to stay small)."""
    from transformers import AutoModelForCausalLM

    _require_weights()
    return AutoModelForCausalLM.from_pretrained(NANO_DIR, dtype=torch.float32, use_kernels=False)  # as model.load_base_model
