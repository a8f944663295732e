"""What every GPU benchmark process records: the machine, the versions, peak memory, and its figures as JSON."""

from __future__ import annotations

import json
import platform
import re
import socket
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch

# every library a recipe of the benchmark may use; one that is not installed is recorded as such
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "unsloth", "unsloth_zoo",
            "triton", "torchao", "cut_cross_entropy", "liger_kernel", "tokenizers", "safetensors")


def versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def gpu() -> dict[str, Any]:
    """The card (name, UUID, compute capability, memory, driver), read with nvidia-smi so that the calling process
    holds no CUDA context (an orchestrator's would sit on the card through every stage); torch where nvidia-smi is
    absent; or, without CUDA, that there is none."""
    fields = ("name", "uuid", "compute_cap", "memory.total", "driver_version")
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "--id=0"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        name, uuid, capability, memory_mib, driver = [v.strip() for v in line.split(",")]
        return {"device": name, "gpu_uuid": uuid, "compute_capability": capability, "memory_gb": float(memory_mib) * 2**20 / 1e9,
                "driver": driver, "cuda": torch.version.cuda}
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    if not torch.cuda.is_available():
        return {"device": "cpu (no CUDA)"}
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "gpu_uuid": str(getattr(props, "uuid", "unknown")),
            "compute_capability": f"{props.major}.{props.minor}", "memory_gb": props.total_memory / 1e9, "cuda": torch.version.cuda}


def environment(commit: str) -> dict[str, Any]:
    """The device, the commit, the host and the versions a results file records."""
    return {**gpu(), "commit": commit, "host": socket.gethostname(), "python": platform.python_version(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions()}


def results_file(results_dir: Path, suffix: str, device: str | None = None) -> Path:
    """<results_dir>/<the GPU's name, lower-case, dashes><suffix>.json (`device`: a name recorded earlier)."""
    name = device or gpu()["device"]
    return results_dir / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + suffix + ".json")


def peak_memory() -> dict[str, float]:
    """This process's peak GPU memory so far: allocated by tensors, and reserved by the caching allocator."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_gb": torch.cuda.max_memory_allocated() / 1e9, "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}


def sync() -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds), the GPU's queued work included."""
    sync()
    started = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - started


def write_figures(path: str | Path, figures: dict[str, Any]) -> None:
    from tangpoem.io import atomic_write_json

    atomic_write_json(path, json.loads(json.dumps(figures, default=str)))
