"""The lean T4 profile's memory levers on and off, each variant a process of its own: chunked cross-entropy and the
paged 8-bit AdamW that the peers' notebooks use (issue 18), and where in a step the peak falls.

    python benchmarks/t4_memory.py --data-dir DIR --out DIR [--commit SHA] [--tiny]

Every variant trains as gpu_speed.py's t4_profile stage does: the CLI with `--config breeze-colab-t4`, every layer
recomputed (the lean profile, issue 18's peak <= 6.5 GB), fp16 forced, the caching allocator capped at 15 GB, no
FlashAttention or cuDNN attention. The levers are not tangpoem's: this script's `child` command puts them into
tangpoem.train in its own process, then runs the CLI. OUT/t4-memory.json holds each variant's loop seconds, peak
memory and losses, with the environment and commit; OUT/t4-memory.log the processes' output.

Every variant also records its step's two phases' peaks (allocated memory): up to the moment the loss's gradient
reaches the last hidden states (forward, loss and the loss's backward: all that chunking the loss can lower), and
after it (the layers' backward, which recomputes each layer, and the optimizer step).
"""

from __future__ import annotations

import argparse
import atexit
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import gpu_speed
from measure import environment, write_figures
from t4_checkpointing import run_logged

LEAN = {"checkpointed_layers": "null"}  # every layer recomputed, whatever the shipped config keeps
BOTH = ["--chunked-loss", "4", "--adamw-8bit"]
VARIANTS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "lean T4 profile (every layer recomputed)": ([], LEAN),
    "+ chunked cross-entropy (4 chunks, each recomputed in the backward)": (["--chunked-loss", "4"], LEAN),
    "+ paged 8-bit AdamW (bitsandbytes)": (["--adamw-8bit"], LEAN),
    "+ both": (BOTH, LEAN),
    "+ both, 31 of 32 layers recomputed (what the memory they free buys)": (BOTH, {"checkpointed_layers": 31}),
    "+ both, 30 of 32 layers recomputed": (BOTH, {"checkpointed_layers": 30}),
    # the eager T4 steps wait on the host's CPU, whose pace can drift over a run: the first variant again at the end
    "lean T4 profile again (the host's drift over the run)": ([], LEAN),
}


# ----------------------------------------------------------------------------- the levers, put into tangpoem.train

def chunked_answer_logits_loss(chunks: int) -> Callable[[torch.nn.Module, dict[str, torch.Tensor], int], torch.Tensor]:
    """tangpoem.train.answer_logits_loss with the lm_head and the loss run on `chunks` pieces of the answer positions,
    each piece recomputed in the backward: the logits of one piece live at a time, not all of them."""
    from torch.utils.checkpoint import checkpoint

    from tangpoem.tokens import answer_positions

    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int) -> torch.Tensor:
        keep, targets = answer_positions(batch["labels"])
        base = model.get_base_model()
        hidden = base.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).last_hidden_state[0, keep]

        def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(base.lm_head(h).float(), t, reduction="sum")

        size = -(-len(keep) // chunks)
        pieces = [checkpoint(piece, h, t, use_reentrant=False) for h, t in zip(hidden.split(size), targets.split(size))]
        return torch.stack(pieces).sum() / num_items

    return loss


def with_paged_adamw_8bit(make: Callable[..., tuple[Any, Any, Any]]) -> Callable[..., tuple[Any, Any, Any]]:
    """tangpoem.train.optimizer_and_schedule with bitsandbytes' PagedAdamW8bit (HF's optim="paged_adamw_8bit": the
    moments in 8 bits, blockwise) in place of torch's AdamW, under the same schedule and loss scaler."""

    def optimizer_and_schedule(cfg: Any, params: list[torch.nn.Parameter], device: torch.device, dtype: torch.dtype,
                               total_steps: int) -> tuple[Any, Any, Any]:
        import bitsandbytes as bnb
        from transformers import get_linear_schedule_with_warmup

        _, _, scaler = make(cfg, params, device, dtype, total_steps)
        optimizer = bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return optimizer, get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps), scaler

    return optimizer_and_schedule


class PhasePeaks:
    """The peak allocated memory of each step's phases, read at their ends; the allocator's peak is reset there,
    so this object also keeps the process's peak (allocated and reserved) across the resets."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.peaks = {"before_the_loop": 0.0, "forward_and_loss": 0.0, "layers_backward_and_step": 0.0}
        self.process = {"peak_gb": 0.0, "peak_reserved_gb": 0.0}
        self.phase = "before_the_loop"

    def end_phase(self, next_phase: str) -> None:
        if self.cuda:
            allocated, reserved = torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9
            self.peaks[self.phase] = max(self.peaks[self.phase], allocated)
            self.process = {"peak_gb": max(self.process["peak_gb"], allocated),
                            "peak_reserved_gb": max(self.process["peak_reserved_gb"], reserved)}
            torch.cuda.reset_peak_memory_stats()
        self.phase = next_phase

    def measured(self, loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`loss_fn` (a tangpoem.train loss) with the phases' ends marked: its start, and the gradient of the final
        norm's output (the last hidden states), which is complete once the loss's backward is done."""

        def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int) -> torch.Tensor:
            self.end_phase("forward_and_loss")
            handle = model.get_base_model().model.norm.register_forward_hook(self.on_hidden_states)
            try:
                return loss_fn(model, batch, num_items)
            finally:
                handle.remove()

        return loss

    def on_hidden_states(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(self.on_hidden_gradient)

    def on_hidden_gradient(self, gradient: torch.Tensor) -> None:
        self.end_phase("layers_backward_and_step")

    def figures(self) -> dict[str, Any]:
        self.end_phase(self.phase)
        return {**self.process, "phase_peaks_gb": self.peaks} if self.cuda else {}


def child(args: argparse.Namespace) -> int:
    """One variant: the levers put into tangpoem.train, then the CLI under users_path.py's T4 cap and kernels."""
    import tangpoem.train as train_module
    from tangpoem.cli import main as cli_main
    from users_path import cap_memory, t4_attention_kernels

    setting: dict[str, Any] = {"chunked_loss": args.chunked_loss, "adamw_8bit": args.adamw_8bit}
    if args.chunked_loss:
        train_module.answer_logits_loss = chunked_answer_logits_loss(args.chunked_loss)
    if args.adamw_8bit:
        train_module.optimizer_and_schedule = with_paged_adamw_8bit(train_module.optimizer_and_schedule)
    phases = PhasePeaks()
    train_module.answer_logits_loss = phases.measured(train_module.answer_logits_loss)
    if torch.cuda.is_available():
        setting |= {**cap_memory(gpu_speed.T4_MEMORY_GB), "sdpa_backends": t4_attention_kernels()}
    started = time.perf_counter()
    atexit.register(lambda: write_figures(args.figures, {**setting, **phases.figures(), "cli_seconds": time.perf_counter() - started}))
    return cli_main(args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args)


# ----------------------------------------------------------------------------- the run

def variant_argv(output: str, flags: list[str], values: dict[str, Any]) -> Callable[[gpu_speed.Run], list[str]]:
    def argv(run: gpu_speed.Run) -> list[str]:
        return gpu_speed.python("t4_memory.py", "child", "--figures", str(run.figures_file(output)), *flags, "--",
                                "train", "--config", "breeze-colab-t4",
                                *gpu_speed.tangpoem_sets(run, output, compute_dtype="float16", **values))

    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    one = sub.add_parser("child", help="one variant's process (the run starts these)")
    one.add_argument("--figures", required=True)
    one.add_argument("--chunked-loss", type=int, default=0, metavar="N")
    one.add_argument("--adamw-8bit", action="store_true")
    one.add_argument("cli_args", nargs=argparse.REMAINDER)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-speed"))
    parser.add_argument("--tiny", action="store_true", help="a toy model on the CPU: the plumbing only")
    args = parser.parse_args()
    if args.what == "child":
        sys.exit(child(args))
    if not args.data_dir or not args.out:
        parser.error("--data-dir and --out are needed")
    run = gpu_speed.Run(args.data_dir, args.work, args.out, args.tiny, homework_prompts=0)
    (run.work / "figures").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"what": "the lean T4 profile (breeze-colab-t4, every layer recomputed) with each memory lever on and off",
               "environment": environment(args.commit), "figures": {}, "errors": {}}
    stages = [gpu_speed.BUILD]
    for i, (label, (flags, values)) in enumerate(VARIANTS.items()):
        output = f"cli-t4-memory-{i}"
        stages.append(gpu_speed.Stage(label, 0, variant_argv(output, flags, values), gpu_speed.train_summary(output),
                                      needs="build", output=output))
    run_logged(run, stages, results, args.out / "t4-memory.json", args.out / "t4-memory.log")


if __name__ == "__main__":
    main()
