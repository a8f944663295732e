"""The models tangpoem brings itself, by name: tangpoem-nano (shipped in the package, pre-trained on 全唐詩)
and the tiny random models that tests and smoke runs use. Any other name is a hub id or a local path."""

from __future__ import annotations

from typing import Any

import torch

NANO = "tangpoem-nano"
TINY = ("tiny-mistral", "tiny-llama")  # tangpoem.tiny builds them
BUILTIN_MODELS = (NANO, *TINY)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def load_builtin_tokenizer(name: str, data_dir: str | None = None) -> Any:
    """nano's shipped tokenizer; a tiny model's BPE, trained on the course text in `data_dir`."""
    if name == NANO:
        from tangpoem import nano

        return nano.load_tokenizer()
    from tangpoem import tiny

    return tiny.build_tokenizer(tiny.TINY_VOCAB_SIZES[name], data_dir=data_dir)


def load_builtin_model(name: str, tokenizer: Any) -> torch.nn.Module:
    """nano's shipped weights (float32); a tiny model's random ones (the same every time)."""
    if name == NANO:
        from tangpoem import nano

        return nano.load_model()
    from tangpoem import tiny

    return tiny.build_model(name, tokenizer)
