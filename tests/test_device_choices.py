"""Device-dependent choices, tested on the CPU by faking the GPU's properties: a T4 (compute capability 7.5)
computes in fp16 with loss scaling, an A100 (8.0) and an H100 (9.0) in bf16; torch.cuda.is_bf16_supported(),
which says yes on a T4 (emulated bf16), is never what decides."""

from __future__ import annotations

import pytest
import torch

from tangpoem.config import Config
from tangpoem.errors import InputError
from tangpoem.runtime import has_native_bf16, resolve_compute_dtype, uses_loss_scaling

GPUS = {"T4": (7, 5), "A100": (8, 0), "H100": (9, 0)}
CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: GPUS[name])
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # as torch says on a T4 too

    return install


@pytest.mark.parametrize("gpu, dtype, scaled", [("T4", torch.float16, True), ("A100", torch.bfloat16, False),
                                                ("H100", torch.bfloat16, False)])
def test_auto_picks_the_dtype_by_compute_capability(fake_gpu, gpu, dtype, scaled):
    fake_gpu(gpu)
    assert has_native_bf16(CUDA) == (dtype == torch.bfloat16)
    assert resolve_compute_dtype(Config(compute_dtype="auto"), CUDA) == dtype
    assert uses_loss_scaling(CUDA, resolve_compute_dtype(Config(), CUDA)) is scaled


def test_the_shipped_t4_configs_compute_in_fp16_on_a_t4(fake_gpu):
    from tangpoem.config import load_config
    from tangpoem.model import quantization_config

    fake_gpu("T4")
    for name in ("breeze-colab-t4", "taide-colab-t4"):
        dtype = resolve_compute_dtype(load_config(name), CUDA)
        assert dtype == torch.float16, name
        pytest.importorskip("bitsandbytes")
        assert quantization_config(dtype).bnb_4bit_compute_dtype == torch.float16


def test_bf16_asked_for_on_a_t4_is_refused_with_the_way_out(fake_gpu):
    fake_gpu("T4")
    with pytest.raises(InputError, match=r"'compute_dtype' = 'bfloat16': this GPU \(compute capability 7.5\) has no native bf16; use float16 or auto"):
        resolve_compute_dtype(Config(compute_dtype="bfloat16"), CUDA)
    fake_gpu("A100")
    assert resolve_compute_dtype(Config(compute_dtype="bfloat16"), CUDA) == torch.bfloat16


def test_the_cpu_computes_in_fp32_without_loss_scaling():
    cpu = torch.device("cpu")
    assert resolve_compute_dtype(Config(), cpu) == torch.float32 and not uses_loss_scaling(cpu, torch.float32)


def test_notebook_02_shows_a_t4s_quantization_config_on_the_cpu(monkeypatch):
    """Without a GPU, 02 shows what a T4 would use (fp16 compute), not bf16."""
    pytest.importorskip("bitsandbytes")
    from tangpoem import lessons

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lessons.quantization_config_for(Config()).bnb_4bit_compute_dtype == torch.float16
