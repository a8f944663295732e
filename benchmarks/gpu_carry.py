"""Fill .gpu_data/ (git-ignored) with what the GPU machine lacks, for the `carry` of the benchmark's device commands.

    .gpu_data/GenAI-Hw5/        the course files (a checkout's ../shared does not travel)
    .gpu_data/wheels/common/    bitsandbytes (its CUDA 13 libraries only: the whole wheel is 43 MB), TRL and
                                datasets (the versions Unsloth pins, so (c) and (d) run the same TRL), dill, multiprocess
    .gpu_data/wheels/unsloth/   Unsloth (without Unsloth Studio, its web UI: 25 MB its Python API never imports)
                                and what it needs beyond the machine's own packages
    .gpu_data/COMMIT            the commit the run measures (with -dirty if the tree has changes)

    python benchmarks/gpu_carry.py [--data-dir ../shared/data/GenAI-Hw5]

Run it in the checkout the device commands are sent from (the lead's). It prints the size that will travel with
each command against the device's 64 MiB. Wheels come from PyPI through pip, for CPython 3.12 on x86-64 Linux.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".gpu_data"
COMMON = ["bitsandbytes==0.50.2", "trl==1.15.0", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19"]
UNSLOTH = ["unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "tyro==1.0.17", "docstring_parser==0.18.0", "shtab==1.13.0",
           "typeguard==4.6.1", "cut_cross_entropy==25.1.1", "msgspec==0.23.0", "torchao==0.18.0", "hf_transfer==0.1.9"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")  # the machine: torch cu130
DEVICE_LIMIT = 64 * 2**20


def download(requirements: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    flags = [f"--platform={p}" for p in PLATFORMS]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *flags, "-d", str(folder), *requirements], check=True)


def slim(folder: Path, project: str, unused: Callable[[str], bool]) -> Path:
    """`project`'s wheel in `folder` without the files `unused` names; its RECORD to match."""
    wheel = next(folder.glob(f"{project}-*.whl"))
    slimmed = wheel.with_name(wheel.name.replace(".whl", ".slim"))
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {n for n in src.namelist() if unused(n)}
        for item in src.infolist():
            if item.filename in dropped:
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if line.split(",")[0] not in dropped).encode()
            dst.writestr(item, data)
    os.replace(slimmed, wheel)
    return wheel


def other_gpu_libraries(name: str) -> bool:
    """bitsandbytes' libraries for other CUDA, ROCm and XPU versions than the machine's torch (cu130) loads."""
    return name.endswith(".so") and Path(name).name not in BNB_KEEP


def studio(name: str) -> bool:
    """Unsloth Studio, the web UI in Unsloth's wheel (25 MB zipped): its Python API (`unsloth`) never imports it."""
    return name.startswith("studio/")


def travelling_bytes() -> int:
    """What a device command sends besides its carry: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TANGPOEM_DATA_DIR", str(ROOT.parent / "shared/data/GenAI-Hw5")))
    args = parser.parse_args()
    if subprocess.run(["git", "check-ignore", "-q", ".gpu_data/x"], cwd=ROOT).returncode != 0:
        sys.exit(f"{CARRY}: git does not ignore it, so it would travel twice; run: echo /.gpu_data/ >> "
                 f"$(git rev-parse --git-common-dir)/info/exclude")
    shutil.rmtree(CARRY, ignore_errors=True)
    data = CARRY / "GenAI-Hw5"
    data.mkdir(parents=True)
    for name in ("Tang_training_data.json", "Tang_testing_data.json", "Tang_testing_gt.txt"):
        shutil.copy(Path(args.data_dir) / name, data / name)
    download(COMMON, CARRY / "wheels" / "common")
    slim(CARRY / "wheels" / "common", "bitsandbytes", other_gpu_libraries)
    download(UNSLOTH, CARRY / "wheels" / "unsloth")
    slim(CARRY / "wheels" / "unsloth", "unsloth", studio)
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    (CARRY / "COMMIT").write_text(commit + "\n")
    tree = travelling_bytes()
    first = tree + folder_bytes(data) + folder_bytes(CARRY / "wheels" / "common") + (CARRY / "COMMIT").stat().st_size
    second = first + folder_bytes(CARRY / "wheels" / "unsloth")
    for label, size in (("command 1 (tree + data + common wheels)", first), ("command 2 (+ Unsloth's wheels)", second)):
        print(f"{label}: {size / 2**20:.1f} MiB of the device's {DEVICE_LIMIT / 2**20:.0f} MiB"
              + ("" if size < DEVICE_LIMIT else "  <- TOO BIG: the call would be refused"))
    print(f"commit {commit}")


if __name__ == "__main__":
    main()
