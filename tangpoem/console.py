"""What a person sees while tangpoem runs: a live progress bar only where someone watches, and none of the
libraries' messages that nobody can act on.

`quiet_libraries()` (run when tangpoem is imported) filters, precisely and in this one place, the messages
whose causes lie in other libraries; each filter says why it exists and when it can go. Causes that lie in
tangpoem are fixed where they are instead (e.g. tangpoem.model calls transformers' current API names).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Callable


def interactive() -> bool:
    """A terminal, or a notebook run by hand. Not a papermill run (the runner sets TANGPOEM_HEADLESS: its saved
    outputs would hold every redraw of a bar), and not a kernel without ipywidgets (tqdm would print text)."""
    if os.environ.get("TANGPOEM_HEADLESS"):
        return False
    if "ipykernel" in sys.modules:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return False
        return True
    return sys.stderr.isatty()


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`; everything else passes."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


# bitsandbytes >= 0.48: importing it on a CPU with AVX512-BF16 looks for the optional `kernels` package (4-bit
# matmuls on a CPU) and logs "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels".
# peft imports bitsandbytes whenever it is installed (peft/helpers.py), even for an fp32 CPU run, and tangpoem
# never runs a 4-bit layer on a CPU (4-bit needs CUDA here), so the advice does not apply.
_BITSANDBYTES_CPU_KERNELS = _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community")

def quiet_libraries() -> None:
    """Install the filters above (idempotent)."""
    # tqdm.auto warns "IProgress not found" once per kernel without ipywidgets; transformers imports tqdm.auto
    # as it loads, so every notebook showed it. tangpoem's own progress needs no widgets (interactive() above).
    warnings.filterwarnings("ignore", message="IProgress not found", category=Warning)
    # peft 0.17-0.21's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5.2x renamed
    # (`is_activation_checkpointing`; the old name warns until v6). Not ours to rename; our own calls use the new names.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_BITSANDBYTES_CPU_KERNELS)
    # torch 2.11: replaying a captured backward (cuda_graphs) whose AccumulateGrad nodes were made by the capture's
    # warm-up products on a side stream warns once per process that their stream differs from the default one.
    # The captured graph replays on its own stream by design (tests/test_gpu.py checks its gradients against eager
    # sdpa); the message tells users of `tangpoem train --config breeze-h100` nothing they can act on.
    warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match", category=UserWarning)


def _without_weight_loading_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def no_weight_loading_bar() -> None:
    """transformers 5 draws a "Loading weights" bar for every model it loads (56 redraws for nano, printed into
    notebook cells and logs). Hide that bar alone: the hub's download bars, which matter for a 15 GB first
    download, stay. Uses transformers' public tqdm hook (5.17+); a hook someone else set is left in place."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(_without_weight_loading_bar)
    if previous not in (None, _without_weight_loading_bar):
        hf_logging.set_tqdm_hook(previous)
