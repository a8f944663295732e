"""tangpoem timed where its users call it, each in a process of its own:

    generate  `tangpoem.generate.generate_test_results(cfg)`, the call behind `tangpoem generate`,
              twice in one process (the first call pays the process's one-off set-up); its own load and
              generate seconds for each call, and the process's peak GPU memory
    cli       the `tangpoem` command's own entry (tangpoem.cli.main) under a GPU memory cap, with only the
              attention kernels a T4 has (no FlashAttention, no cuDNN attention: both need compute capability
              8.0+), writing the process's peak GPU memory at exit

    python benchmarks/users_path.py generate --json FILE --config NAME [--set KEY=VALUE ...]
    python benchmarks/users_path.py cli --peak-json FILE [--memory-gb 15] [--t4-kernels] -- train --config ... --set ...

Training through the command itself (`python -m tangpoem.cli train ...`) needs no wrapper: gpu_speed.py times that
process from start to exit and reads output_dir/train_summary.json.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import time
from typing import Any

import torch

from measure import peak_memory, versions, write_figures


def generate_twice(config: str, overrides: list[str]) -> dict[str, Any]:
    from tangpoem.config import load_config, parse_set
    from tangpoem.generate import generate_test_results

    cfg = load_config(config, parse_set(overrides))
    calls = []
    for _ in range(2):
        files = generate_test_results(cfg, progress=False)
        calls.append({"load_seconds": files.load_seconds, "generate_seconds": files.generate_seconds})
    poems = files.txt.read_text(encoding="utf-8").splitlines()
    return {"calls": calls, "poems": len(poems), "new_tokens_per_poem": cfg.max_new_tokens if cfg.min_new_tokens else "up to EOS",
            "config": {k: getattr(cfg, k) for k in ("static_cache", "dense_generation", "generation_batch_size", "compute_dtype")}}


def cap_memory(gigabytes: float) -> dict[str, float]:
    """Let this process's caching allocator use at most `gigabytes` of the card (the CUDA context comes on top)."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gigabytes * 1e9 / total), 0)
    return {"cap_gb": gigabytes, "card_gb": total / 1e9}


def t4_attention_kernels() -> list[str]:
    """sdpa without the backends a T4 lacks (FlashAttention and cuDNN's need compute capability 8.0+)."""
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    return ["memory-efficient", "math"]


def capped_cli(args: argparse.Namespace) -> int:
    from tangpoem.cli import main as cli_main

    setting: dict[str, Any] = {"argv": args.cli_args}
    if torch.cuda.is_available():
        if args.memory_gb:
            setting.update(cap_memory(args.memory_gb))
        if args.t4_kernels:
            setting["sdpa_backends"] = t4_attention_kernels()
    else:
        setting["no_cuda"] = "no cap and no kernel choice: this machine has no CUDA GPU"
    started = time.perf_counter()
    # written however the command ends (an error's exit status is in the orchestrator's figures)
    atexit.register(lambda: write_figures(args.peak_json, {**setting, **peak_memory(), "cli_seconds": time.perf_counter() - started}))
    return cli_main(args.cli_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--json", required=True)
    gen.add_argument("--config", required=True)
    gen.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cli = sub.add_parser("cli")
    cli.add_argument("--peak-json", required=True)
    cli.add_argument("--memory-gb", type=float, default=0.0, help="cap the caching allocator at this many GB (0: no cap)")
    cli.add_argument("--t4-kernels", action="store_true")
    cli.add_argument("cli_args", nargs=argparse.REMAINDER, help="after --: the tangpoem command's arguments")
    args = parser.parse_args()
    if args.what == "generate":
        started = time.perf_counter()
        figures = generate_twice(args.config, args.overrides)
        write_figures(args.json, {**figures, **peak_memory(), "in_process_seconds": time.perf_counter() - started,
                                  "versions": versions()})
        return
    if args.cli_args[:1] == ["--"]:
        args.cli_args = args.cli_args[1:]
    sys.exit(capped_cli(args))


if __name__ == "__main__":
    main()
