"""Where a process's first generation call spends the time its second call does not (issue 18).

    python benchmarks/generate_first_call.py --config breeze-h100 --set model_name_or_path=CKPT --set data_dir=DIR \\
        --out DIR [--profile] [--commit SHA]

`generate(model, tokenizer, rows, cfg)` (the call inside `generate_test_results`) three times in one
process, on the base model loaded by `load_for_generation` (no adapter: the same dense, graphed path as a
merged one), each call's wall seconds split into the sampler's phases: prefill (from the call's start to the
end of the prompts' forward: encoding, the static cache, the forward), capture (the first choice, then recording
the token step) and the replays and the rest. With --profile the calls run
under torch.profiler (which slows them) and OUT/callN.txt holds its tables. Writes OUT/first_call[-profiled].json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from measure import environment, sync, timed, write_figures


def measured_commit() -> str:
    """The checkout's commit; on the GPU machine (a copy of the tree, no git) the one .gpu_data/COMMIT names."""
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        carried = root / ".gpu_data" / "COMMIT"
        return carried.read_text().strip() if carried.is_file() else "unknown"


def labelled_sampler() -> None:
    """Wrap the sampler's phases in profiler labels (this script's process only)."""
    from tangpoem.fast import decode

    sampler = decode.GraphedSampler
    call, capture, choose = sampler.__call__, sampler.capture, sampler.choose

    def labelled_call(self, *args, **kwargs):
        self._prefilled = False
        with record_function("sampler: call"):
            return call(self, *args, **kwargs)

    def labelled_choose(self, logits):
        if not self._prefilled:  # the prompts' forward has run; later choices are inside the recorded step
            self._prefilled = True
            sync()
            self._phase_marks.append(("prefill", time.perf_counter()))
        return choose(self, logits)

    def labelled_capture(self):
        with record_function("sampler: capture"):
            graph = capture(self)
        sync()
        self._phase_marks.append(("capture", time.perf_counter()))
        return graph

    sampler.__call__, sampler.choose, sampler.capture = labelled_call, labelled_choose, labelled_capture
    sampler._phase_marks = []


def timed_call(model, tokenizer, rows, cfg, profiled: bool, out: Path) -> dict:
    from tangpoem.fast.decode import GraphedSampler
    from tangpoem.generate import generate

    GraphedSampler._phase_marks = marks = []
    sync()
    started = time.perf_counter()
    if profiled:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generate(model, tokenizer, rows, cfg, progress=False)
            sync()
    else:
        generate(model, tokenizer, rows, cfg, progress=False)
        sync()
    ended = time.perf_counter()
    phases, last = {}, started
    for name, mark in marks:
        phases[name] = round(mark - last, 4)
        last = mark
    phases["replays_and_rest"] = round(ended - last, 4)
    if profiled:
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=40)
        table += "\n\n" + prof.key_averages().table(sort_by="device_time_total", row_limit=30)
        out.write_text(table, encoding="utf-8")
    return {"seconds": round(ended - started, 4), "profiled": profiled, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--commit", help="the commit measured (default: git's, else .gpu_data/COMMIT, which gpu_carry.py writes)")
    args = parser.parse_args()

    from tangpoem.config import load_config, parse_set
    from tangpoem.data import load_test_rows
    from tangpoem.generate import load_for_generation

    args.out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, parse_set(args.overrides))
    rows = load_test_rows(cfg.data_dir)
    (model, tokenizer, _), load_seconds = timed(lambda: load_for_generation(cfg, adapter=None))
    labelled_sampler()
    calls = [timed_call(model, tokenizer, rows, cfg, args.profile, args.out / f"call{n}.txt") for n in (1, 2, 3)]
    commit = args.commit or measured_commit()
    result = {**(environment(commit) if torch.cuda.is_available() else {"device": "cpu", "commit": commit}), "config": args.config,
              "load_seconds": round(load_seconds, 3), "calls": calls}
    write_figures(args.out / ("first_call-profiled.json" if args.profile else "first_call.json"), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
