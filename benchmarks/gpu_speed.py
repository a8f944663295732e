"""GPU speed and memory: tangpoem on its users' path against the homework as written, TRL and Unsloth, on one GPU.

    python benchmarks/gpu_speed.py run --part 1 --data-dir DIR --out DIR --commit SHA [--budget 500]
    python benchmarks/gpu_speed.py run --part 2 --data-dir DIR --out DIR --commit SHA [--budget 500]
    python benchmarks/gpu_speed.py merge PART1.json PART2.json [--results-dir benchmarks/results]
    python benchmarks/gpu_speed.py run --part all --tiny --data-dir DIR --out DIR        # CPU smoke of every path

A run is two device commands of at most 9 minutes each (part 1, then part 2 on the same warm machine if it is
still held); each writes OUT/part<N>.json, and `merge` makes benchmarks/results/<gpu>.json from the two, with the
ratios and the issue's targets. Every stage is a process of its own (its own model, its own peak memory):

    part 1  build             the Breeze-shaped random checkpoint (benchmarks/breeze_shape.py), reused if present
            train_cli         `python -m tangpoem.cli train --config breeze-h100`, timed from process start to exit;
                              loading and the loop read from output_dir/train_summary.json
            generate          generate_test_results(cfg) twice in one process, on the checkpoint train_cli wrote
            train_homework    (a) the course notebook's training as written, 65 steps (benchmarks/peers.py)
            train_trl         (c) TRL's SFTTrainer, 65 steps
    part 2  build             (reused on a warm machine, else written again)
            t4_profile        the CLI with `--config breeze-colab-t4` and every layer recomputed (the lean T4
                              profile: issue 18's peak <= 6.5 GB), fp16 forced as a T4 gets it, the caching
                              allocator capped at 15 GB, no FlashAttention/cuDNN attention; its own peak memory
            t4_colab          the same with breeze-colab-t4 as shipped (checkpointed_layers: fewer layers
                              recompute, more memory: issue 18's peak <= 14 GB)
            t4_colab_peft_lora  t4_colab with fused_lora off (peft's own 4-bit LoRA forward): the lever on and off
            train_unsloth_fp16, train_unsloth_bf16   (d) Unsloth, 65 steps each, each on its own NF4 base
            generate_homework the notebook's generation, one prompt at a time (scaled from --homework-prompts)

A stage that fails is recorded under "errors" (exit status and its last output line) and the others run; one that
the command's --budget cannot fit any more is recorded under "skipped"; the part file is rewritten after every stage,
so what ran comes back even if the command is stopped. --tiny runs every stage on the CPU with a toy model (no
NF4, float32, 2 steps): the plumbing, not figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from measure import environment, results_file, write_figures

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
T4_MEMORY_GB = 15.0  # a Colab T4: 15 GB that torch can use (16 GB GDDR6, ~15.8 GB visible, the CUDA context's share on top)


@dataclass
class Run:
    """Where one command's stages read and write."""

    data_dir: str
    work: Path
    out: Path
    tiny: bool
    homework_prompts: int

    @property
    def checkpoint(self) -> Path:
        return self.work / "breeze-shape"

    def figures_file(self, key: str) -> Path:
        return self.work / "figures" / f"{key}.json"

    @property
    def steps(self) -> int:
        return 2 if self.tiny else 65


@dataclass
class Stage:
    key: str
    least_seconds: float  # the least it took on an H200 (process start to exit): skipped when less is left
    argv: Callable[[Run], list[str]]
    read: Callable[[Run, float], dict[str, Any]]  # its figures, given its process seconds
    needs: str = ""  # a stage whose figures it needs
    output: str = ""  # the tangpoem output_dir it trains into (emptied first: a fresh run refuses old checkpoints)


# ----------------------------------------------------------------------------- the stages

def python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / script), *args]


def sets(**values: Any) -> list[str]:
    return [a for key, value in values.items() for a in ("--set", f"{key}={value}")]


def smoke_overrides(run: Run) -> dict[str, Any]:
    """--tiny: the GPU configs made to run on a CPU (no NF4, no GPU-only levers), 2 steps, 8 new tokens."""
    if not run.tiny:
        return {}
    return {"load_in_4bit": "false", "dequantize_base": "false", "varlen_attention": "false", "cuda_graphs": "false",
            "compute_dtype": "float32", "max_steps": run.steps, "max_new_tokens": 8, "min_new_tokens": 8}


def tangpoem_sets(run: Run, output: str, **values: Any) -> list[str]:
    return sets(**{"model_name_or_path": run.checkpoint, "data_dir": run.data_dir, "output_dir": run.work / output,
                   **values, **smoke_overrides(run)})


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def build_argv(run: Run) -> list[str]:
    return python("breeze_shape.py", str(run.checkpoint), "--data-dir", run.data_dir, "--json", str(run.figures_file("build")),
                  *(["--tiny"] if run.tiny else []))


def from_figures(key: str) -> Callable[[Run, float], dict[str, Any]]:
    return lambda run, seconds: {**read_json(run.figures_file(key)), "process_seconds": seconds}


def cli_train_argv(run: Run) -> list[str]:
    return [sys.executable, "-m", "tangpoem.cli", "train", "--config", "breeze-h100", *tangpoem_sets(run, "cli-h100")]


def train_summary(output: str) -> Callable[[Run, float], dict[str, Any]]:
    """The command's wall time beside what train wrote: steps, the loop's seconds (from the run's set-up to the
    last checkpoint written) and the seconds before it (process, data, model, adapters)."""

    def read(run: Run, seconds: float) -> dict[str, Any]:
        summary = read_json(run.work / output / "train_summary.json")
        figures = {"process_seconds": seconds, "steps": summary["steps"], "loop_seconds": summary["seconds"],
                   **summary["timings"], "last_loss": summary["last_loss"]}
        peak_file = run.figures_file(output)
        return {**figures, **(read_json(peak_file) if peak_file.is_file() else {})}

    return read


def generate_argv(run: Run) -> list[str]:
    # the checkpoint train_cli wrote; random weights never stop, so every poem is forced to 128 new tokens
    return python("users_path.py", "generate", "--json", str(run.figures_file("generate")), "--config", "breeze-h100",
                  *tangpoem_sets(run, "cli-h100", results_dir=run.work / "generated", max_new_tokens=128, min_new_tokens=128))


def t4_argv(output: str, **values: Any) -> Callable[[Run], list[str]]:
    def argv(run: Run) -> list[str]:
        return python("users_path.py", "cli", "--peak-json", str(run.figures_file(output)), "--memory-gb", str(T4_MEMORY_GB),
                      "--t4-kernels", "--", "train", "--config", "breeze-colab-t4",
                      *tangpoem_sets(run, output, compute_dtype="float16", **values))  # a T4's dtype, forced (the H200 would pick bf16)

    return argv


def peer_argv(recipe: str, key: str, *extra: str) -> Callable[[Run], list[str]]:
    def argv(run: Run) -> list[str]:
        return python("peers.py", recipe, "--checkpoint", str(run.checkpoint), "--data-dir", run.data_dir,
                      "--work", str(run.work / key), "--json", str(run.figures_file(key)), "--steps", str(run.steps),
                      "--prompts", str(1 if run.tiny else run.homework_prompts),
                      "--adapter", str(run.work / "train_homework" / "exp1" / f"checkpoint-{run.steps}"),
                      *extra, *(["--smoke"] if run.tiny else []))

    return argv


BUILD = Stage("build", 20, build_argv, from_figures("build"))
PARTS: dict[str, list[Stage]] = {
    "1": [
        BUILD,
        Stage("train_cli", 20, cli_train_argv, train_summary("cli-h100"), needs="build", output="cli-h100"),
        Stage("generate", 15, generate_argv, from_figures("generate"), needs="train_cli"),
        Stage("train_homework", 140, peer_argv("homework", "train_homework"), from_figures("train_homework"), needs="build"),
        Stage("train_trl", 150, peer_argv("trl", "train_trl"), from_figures("train_trl"), needs="build"),
    ],
    "2": [
        BUILD,
        Stage("t4_profile", 40, t4_argv("cli-t4", checkpointed_layers="null"), train_summary("cli-t4"), needs="build",
              output="cli-t4"),
        Stage("t4_colab", 40, t4_argv("cli-t4-colab"), train_summary("cli-t4-colab"), needs="build", output="cli-t4-colab"),
        Stage("t4_colab_peft_lora", 40, t4_argv("cli-t4-colab-peft-lora", fused_lora="false"),
              train_summary("cli-t4-colab-peft-lora"), needs="build", output="cli-t4-colab-peft-lora"),
        Stage("train_unsloth_fp16", 140, peer_argv("unsloth", "train_unsloth_fp16", "--dtype", "fp16"),
              from_figures("train_unsloth_fp16"), needs="build"),
        Stage("train_unsloth_bf16", 150, peer_argv("unsloth", "train_unsloth_bf16", "--dtype", "bf16"),
              from_figures("train_unsloth_bf16"), needs="build"),
        Stage("generate_homework", 30, peer_argv("homework-generate", "generate_homework"), from_figures("generate_homework"),
              needs="build"),
    ],
}
PARTS["all"] = PARTS["1"] + PARTS["2"][1:]


# ----------------------------------------------------------------------------- running them

def run_process(argv: list[str], timeout: float) -> tuple[int | None, list[str]]:
    """Run `argv`, its output echoed as it comes; (exit status or None if stopped at `timeout`, its last lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    # a process group of its own (not a session: the device ends a command's sessionless leftovers), so that the
    # stage and anything it started can be stopped together
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", process_group=0)
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def echo() -> None:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    code: int | None = None
    try:
        code = process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        pass
    finally:  # also when this process is stopped (SIGTERM from `timeout`, Ctrl-C): nothing of the stage outlives it
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=10)
    return code, list(tail)


def last_words(tail: list[str]) -> str:
    """The line that says why a process failed: its last line naming an error, else its last line."""
    lines = [line for line in tail if line.strip()]
    named = [line for line in lines if "Error" in line or "error:" in line]
    return (named or lines or ["(no output)"])[-1].strip()[:400]


def run_stage(stage: Stage, run: Run, results: dict[str, Any], deadline: float) -> None:
    built = (run.checkpoint / "breeze_shape.json").is_file()  # a complete checkpoint, of this command or an earlier one
    if stage.needs and stage.needs not in results["figures"] and not (stage.needs == "build" and built):
        results["skipped"][stage.key] = f"needs {stage.needs}, which did not run"
        return
    left = deadline - time.perf_counter()
    least = 0 if run.tiny or (stage is BUILD and built) else stage.least_seconds
    if left < least:
        results["skipped"][stage.key] = f"{left:.0f} s of the command's budget left; it takes at least {least:.0f} s"
        return
    if stage is not BUILD:  # nothing of an earlier run of this stage is read as this one's
        shutil.rmtree(run.work / stage.key, ignore_errors=True)
        run.figures_file(stage.key).unlink(missing_ok=True)
    if stage.output:
        shutil.rmtree(run.work / stage.output, ignore_errors=True)
        run.figures_file(stage.output).unlink(missing_ok=True)
    argv = stage.argv(run)
    print(f"--- {stage.key}: {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code, tail = run_process(argv, left)
    seconds = time.perf_counter() - started
    if code is None:
        results["errors"][stage.key] = f"stopped at the end of the command's budget, after {seconds:.0f} s"
    elif code != 0:
        results["errors"][stage.key] = f"exit status {code}: {last_words(tail)}"
    else:
        try:
            results["figures"][stage.key] = {**stage.read(run, seconds), "command": [str(a) for a in argv]}
        except (OSError, ValueError, KeyError) as e:
            results["errors"][stage.key] = f"ran, but its figures could not be read: {type(e).__name__}: {e}"
    print(f"--- {stage.key}: {seconds:.1f} s, " + ("ok" if stage.key in results["figures"] else results["errors"][stage.key]), flush=True)


def run_part(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    run = Run(args.data_dir, args.work, args.out, args.tiny, args.homework_prompts)
    (run.work / "figures").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"part{args.part}.json"
    results: dict[str, Any] = {"part": args.part, "tiny": args.tiny, "budget_seconds": args.budget,
                               "environment": environment(args.commit), "figures": {}, "errors": {}, "skipped": {}}
    deadline = started + args.budget
    # `timeout` stops a command with SIGTERM: leave through the finally blocks (the running stage is stopped, the
    # part file keeps what was measured)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))
    chosen = [s for s in args.stages.split(",") if s]
    for stage in PARTS[args.part]:
        if chosen and stage.key not in chosen:
            continue
        try:
            run_stage(stage, run, results, deadline)
        except SystemExit as stopped:
            results["errors"][stage.key] = f"{stopped} while it ran"
            raise
        finally:
            results["wall_seconds"] = time.perf_counter() - started
            write_figures(out_file, results)
    print(json.dumps({k: results[k] for k in ("errors", "skipped", "wall_seconds")}, indent=1))
    return out_file


# ----------------------------------------------------------------------------- one results file from the parts

def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def ratios(f: dict[str, Any]) -> dict[str, float | None]:
    """Each peer's training seconds (trainer.train(), loading apart) over tangpoem's loop seconds (set-up to the
    checkpoint written, loading apart), and whole processes against whole processes."""
    get = lambda stage, key: f.get(stage, {}).get(key)  # noqa: E731
    loop, t4 = get("train_cli", "loop_seconds"), get("t4_profile", "loop_seconds")
    calls = get("generate", "calls") or [{}, {}]
    out = {f"train_vs_{peer}": ratio(get(f"train_{peer}", "seconds"), loop)
           for peer in ("homework", "trl", "unsloth_bf16", "unsloth_fp16")}
    out |= {f"train_process_vs_{peer}": ratio(get(f"train_{peer}", "process_seconds"), get("train_cli", "process_seconds"))
            for peer in ("homework", "trl", "unsloth_bf16", "unsloth_fp16")}
    out |= {"t4_vs_homework": ratio(get("train_homework", "seconds"), t4),
            "t4_vs_unsloth_fp16": ratio(get("train_unsloth_fp16", "seconds"), t4),
            "t4_peak_over_unsloth_fp16_peak": ratio(get("t4_profile", "peak_gb"), get("train_unsloth_fp16", "peak_gb")),
            "t4_colab_vs_homework": ratio(get("train_homework", "seconds"), get("t4_colab", "loop_seconds")),
            "t4_colab_vs_unsloth_fp16": ratio(get("train_unsloth_fp16", "seconds"), get("t4_colab", "loop_seconds")),
            "t4_colab_fused_lora_speedup": ratio(get("t4_colab_peft_lora", "loop_seconds"), get("t4_colab", "loop_seconds")),
            "generate_vs_homework_first_call": ratio(get("generate_homework", "seconds_15"), calls[0].get("generate_seconds")),
            "generate_vs_homework_second_call": ratio(get("generate_homework", "seconds_15"), calls[-1].get("generate_seconds"))}
    return out


def targets(f: dict[str, Any], r: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Issue 18's targets, each with its value and whether it is met (None: not measured)."""
    get = lambda stage, key: f.get(stage, {}).get(key)  # noqa: E731
    first_call = (get("generate", "calls") or [{}])[0].get("generate_seconds")
    checks = [("training loop, 65 steps (s)", get("train_cli", "loop_seconds"), "<=", 6.0),
              ("training vs the homework as written (x)", r["train_vs_homework"], ">=", 20.0),
              ("training vs Unsloth bf16 (x)", r["train_vs_unsloth_bf16"], ">=", 20.0),
              ("generating 15 poems, first call (s)", first_call, "<=", 1.2),
              ("T4 profile vs the homework as written (x)", r["t4_vs_homework"], ">=", 4.0),
              ("T4 profile vs Unsloth fp16 (x)", r["t4_vs_unsloth_fp16"], ">=", 3.0),
              ("T4 profile's peak (GB)", get("t4_profile", "peak_gb"), "<=", 6.5),
              ("T4 profile's peak over Unsloth fp16's", r["t4_peak_over_unsloth_fp16_peak"], "<=", 1.2),
              ("breeze-colab-t4's peak (GB)", get("t4_colab", "peak_gb"), "<=", 14.0)]
    return {name: {"value": value, "target": f"{op} {bound}",
                   "met": None if value is None else (value <= bound if op == "<=" else value >= bound)}
            for name, value, op, bound in checks}


def merge(part_files: list[Path], results_dir: Path) -> Path:
    parts = [read_json(p) for p in part_files]
    environments: dict[str, Any] = {}
    for part in parts:  # a part run in two commands (--stages) keeps both environments
        key = part["part"]
        while key in environments:
            key += "+"
        environments[key] = part["environment"]
    first = parts[0]["environment"]
    figures = {k: v for p in parts for k, v in p["figures"].items()}
    errors = {k: v for p in parts for k, v in p["errors"].items() if k not in figures}
    skipped = {k: v for p in parts for k, v in p["skipped"].items() if k not in figures}
    r = ratios(figures)
    results = {
        "what": "tangpoem on its users' path (the CLI's train, generate_test_results) against the course notebook's "
                "training as written, TRL and Unsloth, on a random-initialised Breeze-7B-shaped checkpoint in NF4",
        "device": first["device"], "commit": first["commit"],
        "one_machine": len({e.get("gpu_uuid") for e in environments.values()}) == 1,
        "environments": environments, "tiny": any(p["tiny"] for p in parts),
        "figures": figures, "ratios": r, "targets": targets(figures, r), "errors": errors, "skipped": skipped,
        "notes": {"seconds": "a peer's `seconds` is its trainer.train() call; tangpoem's `loop_seconds` runs from the set-up "
                            "after loading to the last checkpoint written; `process_seconds` is a whole process, start to exit",
                  "t4_profile": f"breeze-colab-t4 through the CLI on the H200, compute_dtype forced to float16 (a T4 has no "
                                f"bf16), the caching allocator capped at {T4_MEMORY_GB:g} GB, FlashAttention and cuDNN "
                                "attention off (compute capability 8.0+ only); its peak is its own process's"},
    }
    out = results_file(results_dir, "-tiny" if results["tiny"] else "", device=first["device"])
    write_figures(out, results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one part's stages, each a process of its own")
    run.add_argument("--part", choices=sorted(PARTS), required=True)
    run.add_argument("--data-dir", required=True)
    run.add_argument("--out", type=Path, required=True, help="part<N>.json goes here")
    run.add_argument("--commit", default="unknown")
    run.add_argument("--work", type=Path, help="checkpoint and stages' files (default /tmp/gpu-speed, /tmp/gpu-speed-tiny)")
    run.add_argument("--budget", type=float, default=500, help="seconds this command may take (stages that no longer fit are skipped)")
    run.add_argument("--homework-prompts", type=int, default=3, help="generate_homework: prompts timed (scaled to 15)")
    run.add_argument("--tiny", action="store_true", help="every stage on the CPU with a toy model: the plumbing only")
    run.add_argument("--stages", default="", help="only these stages of the part (comma-separated), e.g. build,train_trl")
    merged = sub.add_parser("merge", help="benchmarks/results/<gpu>.json from the parts' files")
    merged.add_argument("parts", type=Path, nargs="+")
    merged.add_argument("--results-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if args.command == "run":
        if unknown := {s for s in args.stages.split(",") if s} - {s.key for s in PARTS[args.part]}:
            parser.error(f"--stages: part {args.part} has no stage {', '.join(sorted(unknown))}; "
                         f"it has {', '.join(s.key for s in PARTS[args.part])}")
        args.work = args.work or Path("/tmp/gpu-speed-tiny" if args.tiny else "/tmp/gpu-speed")
        print(f"wrote {run_part(args)}")
    else:
        print(f"wrote {merge(args.parts, args.results_dir)}")


if __name__ == "__main__":
    main()
