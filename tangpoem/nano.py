"""tangpoem-nano: the small pre-trained Tang-poem model that ships inside the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tangpoem.errors import InputError

NANO_NAME = "tangpoem-nano"
NANO_DIR = Path(__file__).parent / "nano_model"  # config.json, model.safetensors, tokenizer.json


def load() -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model) of the packaged nano model, on the CPU in float32."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if not (NANO_DIR / "model.safetensors").is_file():
        raise InputError(f"{NANO_DIR}: the {NANO_NAME} weights are not in this installation")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(NANO_DIR)
    model = AutoModelForCausalLM.from_pretrained(NANO_DIR, dtype=torch.float32)
    return tokenizer, model
