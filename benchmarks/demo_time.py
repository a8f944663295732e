"""Time `tangpoem demo` (the README's main job) end to end, as a user runs it, in a fresh output directory.

Writes benchmarks/results/demo-cpu.json: the machine, the versions, the wall time and how the 15 test
poems came out (verse lengths and verse counts right, from the grader's grades.json).

usage: python benchmarks/demo_time.py --commit SHA [--data-dir ../shared/data/GenAI-Hw5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from tangpoem.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--data-dir", default=os.environ.get("TANGPOEM_DATA_DIR", str(ROOT.parent / "shared/data/GenAI-Hw5")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/demo-cpu.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "tangpoem.cli", "demo", "--data-dir", args.data_dir, "--set", f"output_dir={work}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        seconds = time.perf_counter() - started
        poems = json.loads((Path(work) / "grades.json").read_text(encoding="utf-8"))["files"][0]["poems"]

    atomic_write_json(args.out, {
        "what": "`tangpoem demo` end to end (nano-cpu: before, LoRA fine-tuning, the 15 test poems, grading, after)",
        "commit": args.commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(), "torch": version("torch"), "transformers": version("transformers"),
        "seconds": round(seconds, 1), "test_poems": len(poems),
        "poems_with_every_verse_length_right": sum(p["form"]["lengths_ok"] == 1.0 for p in poems),
        "poems_with_the_right_verse_count": sum(p["form"]["verse_count_ok"] == 1.0 for p in poems),
    })
    print(f"demo: {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
