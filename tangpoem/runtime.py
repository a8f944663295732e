"""The process a run lives in: its seeds and random state, its device and precision, and (under torchrun)
its place among the ranks."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tangpoem.config import Config
from tangpoem.errors import InputError


# ----------------------------------------------------------------------------- seeds

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- ranks

@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """DDP when launched by torchrun/accelerate (WORLD_SIZE > 1), as the homework's WORLD_SIZE branch meant."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # the rank's GPU named here: NCCL's barrier() would otherwise guess it, and warn that it does
        device = {"device_id": torch.device("cuda", local_rank)} if torch.cuda.is_available() else {}
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", **device)
    return Distributed(dist.get_rank(), world_size, local_rank)


# ----------------------------------------------------------------------------- device and precision

def resolve_device(cfg: Config, ranks: Distributed | None = None) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'device' = 'cuda': no CUDA GPU is visible; use device=auto or cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ranks.local_rank if ranks and ranks.world_size > 1 else torch.cuda.current_device())


def has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) and newer. torch.cuda.is_bf16_supported() also
    says yes on a T4 (7.5), where bf16 is emulated: slow, and not what the T4 configs are for."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_compute_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """The precision of the model's matmuls, autocast and the loss scaler: `compute_dtype`, or with "auto"
    bf16 on compute capability 8.0+, fp16 on older GPUs (a Colab T4), fp32 on a CPU."""
    if cfg.compute_dtype != "auto":
        dtype = getattr(torch, cfg.compute_dtype)
        if dtype == torch.bfloat16 and device.type == "cuda" and not has_native_bf16(device):
            major, minor = torch.cuda.get_device_capability(device)
            raise InputError(f"config key 'compute_dtype' = 'bfloat16': this GPU (compute capability {major}.{minor}) "
                             "has no native bf16; use float16 or auto")
        return dtype
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if has_native_bf16(device) else torch.float16


def uses_loss_scaling(device: torch.device, dtype: torch.dtype) -> bool:
    """fp16 on a GPU scales the loss (torch's GradScaler) so that small gradients don't underflow; bf16 and
    fp32 have the range not to need it."""
    return device.type == "cuda" and dtype == torch.float16
