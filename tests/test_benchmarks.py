"""The GPU benchmark's plumbing, on the CPU: its stages' bookkeeping (budget, failures), the merged results file's
ratios and targets, the carried wheels' slimming, the Liger lever group's patches, the T4 memory levers (chunked loss,
paged 8-bit AdamW, phase peaks), and tiny runs in which the absent peers are recorded, not fatal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_carry  # noqa: E402
import gpu_speed  # noqa: E402
from gpu_speed import Run, Stage  # noqa: E402


def _run(tmp_path: Path) -> Run:
    return Run(data_dir=str(tmp_path), work=tmp_path / "work", out=tmp_path / "out", tiny=False, homework_prompts=3)


def _results() -> dict:
    return {"figures": {"build": {}}, "errors": {}, "skipped": {}}


def test_a_stage_the_budget_cannot_fit_is_skipped_with_the_reason(tmp_path):
    stage = Stage("slow", 100, lambda run: [sys.executable, "-c", "pass"], lambda run, s: {})
    results = _results()
    gpu_speed.run_stage(stage, _run(tmp_path), results, deadline=time.perf_counter() + 30)
    assert "slow" not in results["figures"]
    assert "takes at least 100 s" in results["skipped"]["slow"]


def test_a_stage_that_outlasts_the_budget_is_stopped_and_recorded(tmp_path):
    stage = Stage("sleeper", 0, lambda run: [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                  lambda run, s: {})
    results = _results()
    started = time.perf_counter()
    gpu_speed.run_stage(stage, _run(tmp_path), results, deadline=started + 3)
    assert time.perf_counter() - started < 30
    assert results["errors"]["sleeper"].startswith("stopped at the end of the command's budget")


def test_a_failing_stage_is_recorded_with_its_error_line_and_the_next_stage_still_runs(tmp_path):
    run = _run(tmp_path)
    failing = Stage("broken", 0, lambda r: [sys.executable, "-c", "import not_a_module_anywhere"], lambda r, s: {})
    working = Stage("fine", 0, lambda r: [sys.executable, "-c", "print('ok')"], lambda r, s: {"seconds": s})
    results = _results()
    for stage in (failing, working):
        gpu_speed.run_stage(stage, run, results, deadline=time.perf_counter() + 60)
    assert results["errors"]["broken"] == "exit status 1: ModuleNotFoundError: No module named 'not_a_module_anywhere'"
    assert results["figures"]["fine"]["seconds"] > 0
    assert results["figures"]["fine"]["command"][0] == sys.executable


def test_a_stage_whose_input_did_not_run_is_skipped(tmp_path):
    stage = Stage("generate", 0, lambda r: [sys.executable, "-c", "pass"], lambda r, s: {}, needs="train_cli")
    results = _results()
    gpu_speed.run_stage(stage, _run(tmp_path), results, deadline=time.perf_counter() + 60)
    assert results["skipped"]["generate"] == "needs train_cli, which did not run"


def _part(name: str, uuid: str, figures: dict, errors: dict | None = None) -> dict:
    return {"part": name, "tiny": False, "environment": {"device": "NVIDIA H200", "gpu_uuid": uuid, "commit": "abc1234"},
            "figures": figures, "errors": errors or {}, "skipped": {}}


def test_merge_writes_one_results_file_with_ratios_and_targets(tmp_path):
    part1 = _part("1", "GPU-1", {
        "train_cli": {"loop_seconds": 5.0, "process_seconds": 20.0},
        "generate": {"calls": [{"generate_seconds": 1.5}, {"generate_seconds": 1.0}]},
        "train_homework": {"seconds": 130.0, "process_seconds": 150.0},
        "train_trl": {"seconds": 150.0, "process_seconds": 170.0}})
    part2 = _part("2", "GPU-1", {
        "t4_profile": {"loop_seconds": 40.0, "peak_gb": 6.0},
        "t4_colab": {"loop_seconds": 32.5, "peak_gb": 11.5},
        "train_unsloth_fp16": {"seconds": 129.0, "peak_gb": 5.36},
        "train_unsloth_bf16": {"seconds": 110.0},
        "generate_homework": {"seconds_15": 150.0}}, errors={"train_trl": "an earlier failure"})
    files = []
    for i, part in enumerate((part1, part2), start=1):
        files.append(tmp_path / f"part{i}.json")
        files[-1].write_text(json.dumps(part))
    out = gpu_speed.merge(files, tmp_path / "results")
    assert out == tmp_path / "results" / "nvidia-h200.json"
    merged = json.loads(out.read_text())
    assert merged["one_machine"] is True and merged["commit"] == "abc1234"
    assert merged["errors"] == {}  # a stage with figures in one part is not an error of the run
    r = merged["ratios"]
    assert r["train_vs_homework"] == pytest.approx(26.0)
    assert r["train_vs_trl"] == pytest.approx(30.0)
    assert r["train_vs_unsloth_bf16"] == pytest.approx(22.0)
    assert r["train_process_vs_homework"] == pytest.approx(7.5)
    assert r["train_process_vs_unsloth_fp16"] is None  # not measured: no figure, no ratio
    assert r["t4_vs_homework"] == pytest.approx(3.25)
    assert r["t4_colab_vs_homework"] == pytest.approx(4.0)
    assert merged["targets"]["breeze-colab-t4's peak (GB)"]["value"] == pytest.approx(11.5)
    assert r["generate_vs_homework_first_call"] == pytest.approx(100.0)
    targets = merged["targets"]
    assert targets["training loop, 65 steps (s)"]["met"] is True
    assert targets["generating 15 poems, first call (s)"]["met"] is False
    assert targets["T4 profile vs the homework as written (x)"]["met"] is False
    assert targets["T4 profile's peak over Unsloth fp16's"]["value"] == pytest.approx(6.0 / 5.36)


def test_merge_says_when_the_parts_ran_on_two_machines(tmp_path):
    files = []
    for i, uuid in enumerate(("GPU-1", "GPU-2"), start=1):
        files.append(tmp_path / f"part{i}.json")
        files[-1].write_text(json.dumps(_part(str(i), uuid, {})))
    assert json.loads(gpu_speed.merge(files, tmp_path).read_text())["one_machine"] is False


def test_merge_keeps_both_environments_of_a_part_run_in_two_commands(tmp_path):
    """Part 2 run in two commands (--stages), the second on another machine: both environments are kept, so the
    merge does not call it one machine."""
    files = []
    for i, (name, uuid) in enumerate((("1", "GPU-1"), ("2", "GPU-1"), ("2", "GPU-2"))):
        files.append(tmp_path / f"part{i}.json")
        files[-1].write_text(json.dumps(_part(name, uuid, {})))
    merged = json.loads(gpu_speed.merge(files, tmp_path).read_text())
    assert list(merged["environments"]) == ["1", "2", "2+"] and merged["one_machine"] is False


def test_slimming_a_wheel_drops_the_files_and_their_record_lines(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    record = "pkg/__init__.py,sha256=a,1\npkg/libx_cuda118.so,sha256=b,2\npkg/libx_cuda130.so,sha256=c,3\npkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in ("pkg/__init__.py", "pkg/libx_cuda118.so", "pkg/libx_cuda130.so"):
            z.writestr(name, name)
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    gpu_carry.slim(tmp_path, "pkg", lambda name: name.endswith("cuda118.so"))
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/libx_cuda130.so"]
        assert "cuda118" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    assert gpu_carry.studio("studio/frontend/dist/app.js") and not gpu_carry.studio("unsloth/__init__.py")


@pytest.mark.slow
def test_a_tiny_run_records_the_peers_it_cannot_run(tmp_path, course_dir):
    """On this CPU machine: the checkpoint is built, each absent peer becomes an "errors" entry with its reason,
    and the T4 stages (every layer recomputed, then the shipped config) train through the CLI."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(BENCH / "gpu_speed.py"), "run", "--part", "all", "--tiny", "--stages",
                    "build,train_unsloth_fp16,t4_profile,t4_colab", "--data-dir", str(course_dir), "--out", str(out),
                    "--work", str(tmp_path / "w")], check=True, cwd=BENCH.parent)
    part = json.loads((out / "partall.json").read_text())
    assert part["figures"]["build"]["shape"] == "tiny (CPU smoke)"
    assert "unsloth" in part["errors"]["train_unsloth_fp16"].lower()
    assert set(part["figures"]) | set(part["errors"]) == {"build", "train_unsloth_fp16", "t4_profile", "t4_colab"}
    for stage in ("t4_profile", "t4_colab"):  # every layer recomputed, then the shipped config
        assert part["figures"][stage]["steps"] == 2 and part["figures"][stage]["checkpoint_seconds"] > 0
    assert "checkpointed_layers=null" in part["figures"]["t4_profile"]["command"]
    assert not any("checkpointed_layers" in a for a in part["figures"]["t4_colab"]["command"])


def test_the_roofline_model_meets_its_calibration_and_reports_held_out_errors(course_dir):
    import roofline

    result = roofline.report(str(course_dir))
    model = result["model"]
    assert result["token_counts"] == {"rows": 1040, "tokens": 111800, "answer_tokens": 31348}
    # fitted exactly where one parameter meets one figure: the T4's homework, the H200's graphed step
    assert model["t4_epoch_minutes"]["homework"] == pytest.approx(18.25, rel=1e-3)
    assert model["fit_errors"]["breeze-h100 on H200"] == pytest.approx(0, abs=1e-3)
    assert set(model["held_out_errors"]) == {"trl on H200", "unsloth on H200", "unsloth-bf16 on H200"}
    for figures in result["sensitivity"].values():  # every other assumption refitted to the same T4 figure
        assert figures["t4_epoch_minutes"]["homework"] == pytest.approx(18.25, rel=1e-2)
    homework, t4_layout = model["recipes"]["homework"], model["recipes"]["breeze-colab-t4"]
    assert homework["tokens_per_step"] == 16 * 256 and t4_layout["tokens_per_step"] == pytest.approx(111800 / 65)
    assert t4_layout["Tesla T4"]["step_s"] < homework["Tesla T4"]["step_s"]
    assert "note" in model["recipes"]["breeze-h100"]["Tesla T4"]
    # the shipped breeze-colab-t4 recomputes fewer layers (its config's checkpointed_layers): fewer FLOPs, a shorter step
    from tangpoem.config import load_config

    shipped = model["recipes"]["breeze-colab-t4-shipped"]
    assert f"{load_config('breeze-colab-t4').checkpointed_layers} of 32 layers recomputed" in shipped["recipe"]
    assert ("LoRA fused" in shipped["recipe"]) == load_config("breeze-colab-t4").fused_lora
    assert shipped["tflop_per_step"] < t4_layout["tflop_per_step"]
    assert shipped["Tesla T4"]["step_s"] < t4_layout["Tesla T4"]["step_s"]


def test_the_first_call_benchmarks_phase_labels_leave_the_samplers_tokens_alone(monkeypatch):
    """generate_first_call.py wraps the sampler's methods to mark the end of the prefill (and of a capture): the
    wrapped sampler writes the tokens the plain one does, and marks the prefill once a call."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    import generate_first_call
    from tangpoem.fast import decode

    for name in ("__call__", "choose", "capture"):  # restored after the test: the wrappers change the class
        monkeypatch.setattr(decode.GraphedSampler, name, getattr(decode.GraphedSampler, name))
    monkeypatch.setattr(decode.GraphedSampler, "_phase_marks", [], raising=False)  # removed again after the test
    config = MistralConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    ids = torch.randint(3, 200, (2, 6))
    with torch.no_grad():
        plain = decode.GraphedSampler(model, [], 12, 0, False, 2, 0, graphs=False)(ids, torch.ones_like(ids))
        generate_first_call.labelled_sampler()
        decode.GraphedSampler._phase_marks = []
        labelled = decode.GraphedSampler(model, [], 12, 0, False, 2, 0, graphs=False)(ids, torch.ones_like(ids))
    assert torch.equal(plain, labelled)
    assert [name for name, _ in decode.GraphedSampler._phase_marks] == ["prefill"]  # no graphs on a CPU: no capture


@pytest.mark.slow
def test_the_checkpointing_sweep_runs_each_value_and_none_means_every_layer(tmp_path, course_dir):
    """benchmarks/t4_checkpointing.py on the CPU (--tiny): one process per value, "none" overriding the shipped
    config's checkpointed_layers, every value's figures in one results file."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(BENCH / "t4_checkpointing.py"), "--tiny", "--layers", "none,1", "--data-dir",
                    str(course_dir), "--out", str(out), "--work", str(tmp_path / "w")], check=True, cwd=BENCH.parent,
                   capture_output=True)
    results = json.loads((out / "t4-checkpointing.json").read_text())
    assert results["errors"] == {} and results["environment"]["commit"] == "unknown"
    every, one = results["figures"]["checkpointed_layers=none"], results["figures"]["checkpointed_layers=1"]
    assert "checkpointed_layers=null" in every["command"] and "checkpointed_layers=1" in one["command"]
    assert every["steps"] == one["steps"] == 2


def test_the_liger_group_patches_mistral_only_while_a_variant_runs(monkeypatch, tmp_path):
    """gpu_levers.py --levers liger: each variant's Liger kernels are in transformers' Mistral module only while its
    run lasts (a failing run too), never the fused linear cross-entropy (its `.item()` cannot be captured); the
    variant with Liger's RMSNorm turns tangpoem's fused RMSNorm off, which would otherwise replace Liger's forward."""
    import types

    from transformers.models.mistral import modeling_mistral

    import gpu_levers

    calls = []

    def apply_liger_kernel_to_mistral(rope, cross_entropy, fused_linear_cross_entropy, rms_norm, swiglu):
        calls.append({"cross_entropy": cross_entropy, "fused_linear_cross_entropy": fused_linear_cross_entropy})
        for kernel, on in (("rope", rope), ("rms_norm", rms_norm), ("swiglu", swiglu)):
            if on:  # as liger does: a module attribute replaced
                setattr(modeling_mistral, gpu_levers.LIGER_NAMES[kernel], f"liger {kernel}")

    liger = types.ModuleType("liger_kernel.transformers")
    liger.apply_liger_kernel_to_mistral = apply_liger_kernel_to_mistral
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", liger)
    originals = {name: getattr(modeling_mistral, name) for name in gpu_levers.LIGER_NAMES.values()}

    with gpu_levers.liger_kernels(("swiglu", "rope")):
        assert modeling_mistral.MistralMLP == "liger swiglu"
        assert modeling_mistral.apply_rotary_pos_emb == "liger rope"
        assert modeling_mistral.MistralRMSNorm is originals["MistralRMSNorm"]
    assert {name: getattr(modeling_mistral, name) for name in originals} == originals
    with pytest.raises(RuntimeError), gpu_levers.liger_kernels(("rms_norm",)):
        assert modeling_mistral.MistralRMSNorm == "liger rms_norm"
        raise RuntimeError("the run failed")
    assert {name: getattr(modeling_mistral, name) for name in originals} == originals
    assert calls == [{"cross_entropy": False, "fused_linear_cross_entropy": False}] * 2

    runs = gpu_levers.liger_runs({}, tmp_path)
    assert [kernels for _, _, kernels in runs][0] == () and runs[-1][2] == ()  # as shipped, before and after
    for label, cfg, kernels in runs:
        assert cfg.fused_rms_norm == ("rms_norm" not in kernels), label
    assert len({cfg.output_dir for _, cfg, _ in runs}) == len(runs)


def _tiny_lora_batch(tiny_config):
    """A tiny-mistral LoRA model (no dropout; B drawn at random, so that A learns too) and a packed batch of 6 rows."""
    from tangpoem.data import load_train_rows
    from tangpoem.model import add_lora, load_tokenizer
    from tangpoem.tiny import build_model
    from tangpoem.tokens import count_label_tokens, encode_training_rows
    from tangpoem.train import packed_batch

    cfg = tiny_config(model_name_or_path="tiny-mistral", lora_dropout=0.0)
    tokenizer = load_tokenizer(cfg)
    rows = encode_training_rows(tokenizer, load_train_rows(cfg.data_dir, 6), cfg.cutoff_len).rows
    torch.manual_seed(0)
    model = add_lora(build_model("tiny-mistral", tokenizer), cfg)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    return model, packed_batch(rows, tokenizer.pad_token_id), count_label_tokens(rows)


def test_the_chunked_loss_lever_gives_the_loss_and_gradients_it_replaces(tiny_config):
    """t4_memory.py's chunked cross-entropy (lm_head and loss on pieces of the answer positions, each recomputed in
    the backward) computes tangpoem's answer-logits loss and its gradients, with a last piece shorter than the others."""
    import t4_memory
    from tangpoem.train import answer_logits_loss

    model, batch, num_items = _tiny_lora_batch(tiny_config)
    params = [p for p in model.parameters() if p.requires_grad]
    figures = []
    for loss_fn in (answer_logits_loss, t4_memory.chunked_answer_logits_loss(3)):
        model.zero_grad()
        loss = loss_fn(model, batch, num_items)
        loss.backward()
        figures.append((loss.detach(), [p.grad.clone() for p in params]))
    (plain, plain_grads), (chunked, chunked_grads) = figures
    assert num_items % 3 != 0  # the pieces are unequal
    assert torch.allclose(chunked, plain, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in plain_grads)
    assert all(torch.allclose(c, p, rtol=1e-4, atol=1e-7) for c, p in zip(chunked_grads, plain_grads))


def test_the_phase_peaks_end_the_loss_phase_when_the_last_hidden_states_get_their_gradient(tiny_config):
    """t4_memory.py's PhasePeaks: a micro-step's loss starts the forward-and-loss phase; the final norm's output
    getting its gradient (the loss's backward done) starts the layers' phase; no hook stays on the norm."""
    import t4_memory
    from tangpoem.train import answer_logits_loss

    model, batch, num_items = _tiny_lora_batch(tiny_config)
    phases = t4_memory.PhasePeaks()
    loss = phases.measured(answer_logits_loss)(model, batch, num_items)
    assert phases.phase == "forward_and_loss"
    assert not model.get_base_model().model.norm._forward_hooks
    loss.backward()
    assert phases.phase == "layers_backward_and_step"


def test_the_paged_8bit_lever_keeps_the_schedule_and_the_scaler(tiny_config):
    """t4_memory.py's paged 8-bit AdamW replaces only the optimizer: the learning rate follows tangpoem's schedule."""
    import bitsandbytes as bnb
    import t4_memory
    from tangpoem.train import optimizer_and_schedule

    cfg = tiny_config(warmup_steps=2)
    param = torch.nn.Parameter(torch.zeros(64, 128))
    optimizer, scheduler, scaler = t4_memory.with_paged_adamw_8bit(optimizer_and_schedule)(
        cfg, [param], torch.device("cpu"), torch.float32, 10)
    assert isinstance(optimizer, bnb.optim.PagedAdamW8bit) and not scaler.is_enabled()
    assert scheduler.optimizer is optimizer and optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay
    assert scheduler.get_last_lr()[0] == 0.0  # warmup's first step
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(cfg.learning_rate / 2)


@pytest.mark.slow
def test_the_memory_levers_run_each_variant_in_a_process_of_its_own(tmp_path, course_dir):
    """benchmarks/t4_memory.py on the CPU (--tiny): every variant trains through the CLI with its levers' flags,
    every figure in one results file."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(BENCH / "t4_memory.py"), "--tiny", "--data-dir", str(course_dir), "--out", str(out),
                    "--work", str(tmp_path / "w")], check=True, cwd=BENCH.parent, capture_output=True)
    results = json.loads((out / "t4-memory.json").read_text())
    assert results["errors"] == {}
    import t4_memory

    for label, (flags, values) in t4_memory.VARIANTS.items():
        figures = results["figures"][label]
        assert figures["steps"] == 2 and all(flag in figures["command"] for flag in flags)
        assert f"checkpointed_layers={values['checkpointed_layers']}" in figures["command"]
        assert figures["chunked_loss"] == (4 if "--chunked-loss" in flags else 0)
        assert figures["adamw_8bit"] == ("--adamw-8bit" in flags)
