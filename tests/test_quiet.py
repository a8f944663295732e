"""No noise a user can't act on (issues 14.9 and 16): the demo's whole path prints nothing on stderr, and each
filter of tangpoem/console.py drops its one message and nothing else."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# stderr lines `tangpoem demo` may print on a CPU. Empty: every library message it printed (setuptools' licence
# banner, bitsandbytes' `kernels` advice, transformers' FutureWarnings and weight-loading bars) is fixed or filtered.
ALLOWED_STDERR: tuple[str, ...] = ()


@pytest.mark.slow
def test_the_demo_path_writes_nothing_to_stderr(tmp_path, course_dir):
    """`tangpoem demo` end to end on the tiny model (2 steps) in a fresh interpreter, as `make demo` starts it, with
    Python's default warning filters: no warning, bar or library message reaches stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-m", "tangpoem.cli", "demo", "--config", "tiny-cpu", "--data-dir", str(course_dir),
                           "--set", f"output_dir={tmp_path / 'demo'}", "--set", "num_train_data=16", "--set", "max_steps=2",
                           "--set", "save_steps=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== after fine-tuning" in done.stdout and "step 2/2" in done.stdout
    unexpected = [line for line in done.stderr.splitlines() if line not in ALLOWED_STDERR]
    assert not unexpected, unexpected[:10]


def _emitted(logger_name: str, message: str) -> bool:
    """Would a WARNING with this message reach a handler (the user's terminal)?"""
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger_name, logging.WARNING, __file__, 0, message, (), None)
    return bool(logger.filter(record))


def test_the_bitsandbytes_kernels_advice_alone_is_dropped():
    import tangpoem  # noqa: F401  (installs the filters)

    name = "bitsandbytes.backends.cpu.ops"
    assert not _emitted(name, "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
                              "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")
    assert _emitted(name, "some other bitsandbytes warning")


def test_greedy_generation_raises_no_flag_warning():
    """tangpoem's generation configs set no value transformers flags (strict validation raises where it would
    warn, once per process), greedy or sampling; nothing of transformers' own checks is filtered."""
    from transformers import GenerationConfig

    from tangpoem.config import Config
    from tangpoem.generate import fast_generation_config
    from tangpoem.model import load_tokenizer

    tokenizer = load_tokenizer(Config(model_name_or_path="tiny-mistral"))
    for do_sample in (False, True):
        fast_generation_config(Config(do_sample=do_sample), tokenizer)[0].validate(strict=True)
    with pytest.raises(ValueError, match="top_k"):  # what the greedy config used to set
        GenerationConfig(do_sample=False, top_k=0).validate(strict=True)


def test_lora_on_a_checkpointed_model_warns_nothing():
    """Gradient checkpointing by transformers' current name, and peft's read of the old one filtered: preparing a
    model for training raises no FutureWarning (or any other warning)."""
    from tangpoem.config import load_config
    from tangpoem.model import add_lora, load_base_model

    cfg = load_config("tiny-cpu", {"gradient_checkpointing": True})
    base = load_base_model(cfg)
    gc.collect()  # earlier tests' leftovers (an event loop, a socket) warn when collected: before the block, not in it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        model = add_lora(base, cfg)  # the filter above is console.quiet_libraries' (pytest resets filters per test)
    checkpointing = getattr(model.base_model.model, "is_activation_checkpointing", None)
    assert checkpointing is None or checkpointing  # transformers 5.2x; 5.17 has only the old name


def test_loading_a_model_draws_no_weight_loading_bar(capfd):
    """transformers' "Loading weights" bar is hidden (nano is loaded with from_pretrained)."""
    from tangpoem.config import load_config
    from tangpoem.model import load_base_model

    load_base_model(load_config("nano-cpu"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err[-500:]


def test_the_captured_backwards_stream_warning_alone_is_dropped():
    """torch's note on a captured backward's AccumulateGrad stream (seen in `tangpoem train --config breeze-h100`
    on the GPU) is dropped; another UserWarning still shows."""
    import tangpoem  # noqa: F401  (installs the filters)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        from tangpoem.console import quiet_libraries

        quiet_libraries()  # catch_warnings reset the filters: install them inside, as tangpoem's import does
        warnings.warn("The AccumulateGrad node's stream does not match the stream of the node that produced the "
                      "incoming gradient.", UserWarning)
        warnings.warn("some other user warning", UserWarning)
    assert [str(w.message) for w in caught] == ["some other user warning"]
