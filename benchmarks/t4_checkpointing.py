"""breeze-colab-t4 with fewer layers recomputed: `checkpointed_layers` swept, each value a process of its own.

    python benchmarks/t4_checkpointing.py --data-dir DIR --out DIR [--layers none,24,20,16] [--commit SHA] [--tiny]

Each value trains the T4 profile as gpu_speed.py's t4_profile stage does (the CLI, fp16 forced, the caching allocator
capped at 15 GB, no FlashAttention or cuDNN attention) with `--set checkpointed_layers=N` ("none": every layer
recomputes, as the T4 configs did before this knob). OUT/t4-checkpointing.json holds each value's loop seconds and
peak memory, with the environment and commit; OUT/t4-checkpointing.log the processes' output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import gpu_speed
from measure import environment, write_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", default="none,24,20,16", help="checkpointed_layers values, comma-separated")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-speed"))
    parser.add_argument("--tiny", action="store_true", help="a toy model on the CPU: the plumbing only")
    args = parser.parse_args()
    run = gpu_speed.Run(args.data_dir, args.work, args.out, args.tiny, homework_prompts=0)
    (run.work / "figures").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"what": "breeze-colab-t4 (the T4 profile) for each checkpointed_layers value", "environment": environment(args.commit),
               "figures": {}, "errors": {}}
    out_file = args.out / "t4-checkpointing.json"
    stages = [gpu_speed.BUILD]
    for value in args.layers.split(","):
        key = f"checkpointed_layers={value}"
        output = f"cli-t4-layers-{value}"
        layers = "null" if value == "none" else int(value)  # "none" overrides the config's value too
        stages.append(gpu_speed.Stage(key, 0, gpu_speed.t4_argv(output, checkpointed_layers=layers),
                                      gpu_speed.train_summary(output), needs="build", output=output))
    run_logged(run, stages, results, out_file, args.out / "t4-checkpointing.log")


def run_logged(run: gpu_speed.Run, stages: list[gpu_speed.Stage], results: dict[str, Any], out_file: Path, log_file: Path) -> None:
    """Each stage in turn, its processes' output to `log_file`, one line each to the console; `out_file` rewritten
    after every stage."""
    deadline = time.perf_counter() + 3600
    stdout = sys.stdout
    with log_file.open("w", encoding="utf-8") as log:
        try:
            sys.stdout = log
            for stage in stages:
                gpu_speed.run_stage(stage, run, results, deadline)
                figures = results["figures"].get(stage.key, {})
                print(f"{stage.key}: loop {figures.get('loop_seconds', float('nan')):.2f} s, peak {figures.get('peak_gb', float('nan')):.2f} GB"
                      f" ({results['errors'].get(stage.key, 'ok')})", file=stdout, flush=True)
                write_figures(out_file, results)
        finally:
            sys.stdout = stdout
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
