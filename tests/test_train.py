"""Training end to end on the CPU: loss goes down, checkpoints are complete or absent, resume is exact."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tangpoem.errors import InputError
from tangpoem.checkpoints import ADAPTER_FILE, list_checkpoints, pick_checkpoint
from tangpoem.train import train

REPO = Path(__file__).resolve().parent.parent
SMALL = {"num_train_data": 16, "max_steps": 10, "learning_rate": 1e-2, "warmup_steps": 0, "save_steps": 4}


def test_training_lowers_the_loss_and_writes_checkpoints(tiny_config):
    cfg = tiny_config(**{**SMALL, "max_steps": 16})
    result = train(cfg)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    names = [p.name for p in result.checkpoints]
    assert names == ["checkpoint-8", "checkpoint-12", "checkpoint-16"]  # save_total_limit 3 pruned checkpoint-4
    assert (Path(cfg.output_dir) / "loss_history.json").is_file()
    assert set(os.listdir(result.checkpoints[-1])) >= {ADAPTER_FILE, "adapter_config.json", "training_state.pt"}


def test_step_callbacks_see_every_step_in_order_as_the_history_records_it(tiny_config):
    """Callbacks get each step once, in order (on a GPU most steps are read once the next one is queued),
    and every checkpoint's history holds its own step."""
    seen = []
    result = train(tiny_config(**{**SMALL, "logging_steps": 3}), on_step_end=[lambda step, record: seen.append((step, record))])
    assert [step for step, _ in seen] == list(range(1, 11))
    assert [record for _, record in seen] == result.history
    for checkpoint in result.checkpoints:
        state = torch.load(checkpoint / "training_state.pt", weights_only=False)
        assert [h["step"] for h in state["history"]] == list(range(1, state["step"] + 1))
    assert result.timings["checkpoint_seconds"] > 0 and result.timings["capture_seconds"] == 0
    assert 0 < result.timings["set_up_seconds"] < result.timings["first_step_seconds"] < result.seconds


def test_pick_checkpoint_by_index(tiny_config):
    cfg = tiny_config(**SMALL)
    train(cfg)
    checkpoints = list_checkpoints(cfg.output_dir)
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-8", "checkpoint-10"]
    assert pick_checkpoint(cfg.output_dir, -1, "val_loss").name == "checkpoint-10"
    assert pick_checkpoint(cfg.output_dir, 0, "val_loss").name == "checkpoint-4"
    with pytest.raises(InputError, match="has 3 checkpoints"):
        pick_checkpoint(cfg.output_dir, 5, "val_loss")
    # the listings mark what pick_checkpoint picks, and nothing where it refuses
    from tangpoem.lessons import checkpoints_table

    picked = {index: [row[0] for row in checkpoints_table(tiny_config(**SMALL, checkpoint_index=index)).rows if row[-1]]
              for index in (-1, 0, -3, 5, -4)}
    assert picked == {-1: [2], 0: [0], -3: [0], 5: [], -4: []}
    with pytest.raises(InputError, match="no checkpoints"):
        pick_checkpoint(Path(cfg.output_dir) / "nothing", -1, "val_loss")


def test_a_second_run_refuses_to_mix_with_old_checkpoints(tiny_config):
    cfg = tiny_config(**{**SMALL, "max_steps": 4})
    train(cfg)
    with pytest.raises(InputError, match="holds checkpoints of an earlier run .*continue it with --resume"):
        train(cfg)


def _run(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, **kwargs)


def _train_cli(cfg_overrides, *extra):
    sets = [a for k, v in cfg_overrides.items() for a in ("--set", f"{k}={v}")]
    result = _run(["-m", "tangpoem.cli", "train", "--config", "tiny-cpu", *sets, *extra])
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _adapter(output_dir):
    return load_file(str(list_checkpoints(output_dir)[-1] / ADAPTER_FILE))


# A training process that dies the hard way (SIGKILL: no cleanup, no finally blocks) at a chosen moment.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from tangpoem.config import load_config
    from tangpoem import train as recipe

    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
    cfg = load_config("tiny-cpu", overrides)
    when = sys.argv[1]
    if when.startswith("after-step-"):
        stop = int(when.rsplit("-", 1)[1])
        def kill(step, record):
            if step == stop:
                os.kill(os.getpid(), signal.SIGKILL)
        recipe.train(cfg, on_step_end=[kill])
    elif when.startswith("while-saving-"):
        stop = int(when.rsplit("-", 1)[1])
        real_save = torch.save
        def dying_save(obj, path, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == stop:
                with open(path, "wb") as f:
                    f.write(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, path, *a, **k)
        recipe.torch.save = dying_save
        recipe.train(cfg)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after-step-6", "while-saving-8"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tmp_path, course_dir, when):
    common = {**SMALL, "data_dir": course_dir, "val_size": 16}  # evaluation at each save must not disturb the resume
    _train_cli({**common, "output_dir": tmp_path / "straight"})

    interrupted = tmp_path / "interrupted"
    killed = _run(["-c", KILLER, when, *[f"{k}={v}" for k, v in {**common, "output_dir": interrupted}.items()]])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-4"]  # only complete ones count
    if when.startswith("while-saving"):
        assert [p.name for p in interrupted.iterdir() if p.name.endswith(".tmp")]  # the torn save is left aside

    resumed = _train_cli({**common, "output_dir": interrupted}, "--resume")
    assert "resume: from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-4", "checkpoint-8", "checkpoint-10"]

    straight, after = _adapter(tmp_path / "straight"), _adapter(interrupted)
    assert straight.keys() == after.keys() and len(straight) > 0
    for name in straight:
        assert torch.equal(straight[name], after[name]), name
    state = torch.load(list_checkpoints(interrupted)[-1] / "training_state.pt", weights_only=False)
    straight_state = torch.load(list_checkpoints(tmp_path / "straight")[-1] / "training_state.pt", weights_only=False)
    assert [h["loss"] for h in state["history"]] == [h["loss"] for h in straight_state["history"]]
    # the evaluations: those of the checkpoint resumed, then the resumed run's; the same figures as straight through
    timeless = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]  # noqa: E731
    assert [e["step"] for e in state["eval_history"]] == [4, 8, 10]
    assert timeless(state["eval_history"]) == timeless(straight_state["eval_history"])
    assert timeless(json.loads((interrupted / "eval_history.json").read_text(encoding="utf-8"))) == timeless(state["eval_history"])


@pytest.mark.slow
def test_ddp_under_torchrun_matches_a_single_process(tmp_path, course_dir):
    """Two ranks (gloo on the CPU) share each global batch; the optimizer step is the same math. Rank 0
    evaluates each save and hands its figures to rank 1."""
    common = {**SMALL, "max_steps": 4, "data_dir": course_dir, "lora_dropout": 0.0, "val_size": 8}
    _train_cli({**common, "output_dir": tmp_path / "single"})
    sets = [a for k, v in {**common, "output_dir": tmp_path / "ddp"}.items() for a in ("--set", f"{k}={v}")]
    result = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "tangpoem.cli", "train", "--config", "tiny-cpu", *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split("  ")[0] for line in result.stdout.splitlines() if "step 4/4" in line] == ["step 4/4", "eval"]  # rank 0 logs
    single, ddp = _adapter(tmp_path / "single"), _adapter(tmp_path / "ddp")
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=1e-5), name
    evaluations = [json.loads((tmp_path / run / "eval_history.json").read_text(encoding="utf-8")) for run in ("single", "ddp")]
    assert [[e["step"] for e in history] for history in evaluations] == [[4], [4]]
    assert abs(evaluations[0][0]["val_loss"] - evaluations[1][0]["val_loss"]) < 1e-4


def test_each_rank_takes_a_consecutive_share_as_even_as_can_be_and_no_rank_goes_without(tiny_config, monkeypatch):
    """9 rows on 4 ranks: 3, 2, 2, 2 (a split by ceil would leave the last rank none, and under DDP's hooks the
    others would wait for it); a run whose epochs end on a step of fewer rows than processes is refused."""
    import tangpoem.train as train_module
    from tangpoem.train import rank_rows

    assert [list(range(9))[rank_rows(9, 4, r)] for r in range(4)] == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert [len(range(16)[rank_rows(16, 2, r)]) for r in range(2)] == [8, 8]
    class PastTheCheck(Exception):
        pass

    def resume_point(*args):  # the set-up's next step after the check: stop there
        raise PastTheCheck

    monkeypatch.setattr(train_module, "setup_distributed", lambda: train_module.Distributed(rank=0, world_size=2))
    monkeypatch.setattr(train_module, "resume_point", resume_point)
    with pytest.raises(InputError, match="last step has 1 row.* for 2 processes"):
        train_module.train(tiny_config(num_train_data=17, batch_size=16, micro_batch_size=4))
    with pytest.raises(PastTheCheck):  # a run of one step never reaches that last step
        train_module.train(tiny_config(num_train_data=17, batch_size=16, micro_batch_size=4, max_steps=1))
    with pytest.raises(PastTheCheck):  # 18 rows: a last step of 2, one for each process
        train_module.train(tiny_config(num_train_data=18, batch_size=16, micro_batch_size=4))


def test_balanced_steps_under_ddp_balance_each_ranks_share(tiny_config):
    """Under DDP each rank runs its consecutive share of a step's rows: balanced_steps evens out those
    shares (8 rows each of 16 on 2 ranks), not the whole step's 16 rows, so that no rank's captured
    micro-batch is padded for a long share; a resume on another number of processes is refused."""
    from types import SimpleNamespace

    from tangpoem.data import load_train_rows
    from tangpoem.model import load_tokenizer
    from tangpoem.runtime import Distributed
    from tangpoem.tokens import encode_training_rows
    from tangpoem.train import check_resumable, epoch_order

    cfg = tiny_config(num_train_data=320, batch_size=16, micro_batch_size=16, balanced_steps=True)
    lengths = encode_training_rows(load_tokenizer(cfg), load_train_rows(cfg.data_dir, 320), cfg.cutoff_len).lengths

    def share_tokens(order):
        return [sum(lengths[r] for r in order[i : i + 8]) for i in range(0, 320, 8)]

    one, two = epoch_order(cfg, lengths)(0), epoch_order(cfg, lengths, world_size=2)(0)
    assert sorted(two) == list(range(320))  # every row once an epoch
    assert max(share_tokens(two)) <= -(-sum(lengths) // 40) + 2 < max(share_tokens(one))
    state = {"config": cfg.to_dict(), "world_size": 2}
    with pytest.raises(InputError, match="processes .*2 in checkpoint-4, 1 now"):
        check_resumable(state, Path("run/checkpoint-4"), cfg, SimpleNamespace(fingerprint="x"), Distributed(), force=False)
    check_resumable(state, Path("run/checkpoint-4"), cfg, SimpleNamespace(fingerprint="x"), Distributed(rank=0, world_size=2), force=False)


# torchrun's ranks with the gradient averaging that DDP under CUDA graphs uses (fast.levers.gradient_sync),
# chosen here without the graphs (which need CUDA)
FLAT_SYNC = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import tangpoem.fast.levers as levers
    levers.ddp_hooks = lambda cfg, ranks: False
    chosen = levers.gradient_sync

    def gradient_sync(cfg, params, ranks):  # says, in a file per rank, whether the gradients are views of the flat buffers
        sync = chosen(cfg, params, ranks)
        views = all(p.grad is not None and p.grad._base is not None for p in params)
        Path(__file__).with_name(f"rank{os.environ['RANK']}.txt").write_text(f"gradients in flat buffers: {views}")
        return sync

    levers.gradient_sync = gradient_sync
    from tangpoem.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_ddp_with_one_flat_all_reduce_matches_ddps_hooks_and_a_single_process(tmp_path, course_dir):
    """DDP under CUDA graphs averages the ranks' gradients in one all-reduce of a flat buffer after the step's
    micro-batches (DDP's hooks cannot join a captured backward). Two ranks (gloo) with that averaging, two
    micro-batches a step: the adapter of a single process, and the losses it logs."""
    common = {**SMALL, "max_steps": 4, "data_dir": course_dir, "lora_dropout": 0.0, "micro_batch_size": 2}
    single = _train_cli({**common, "output_dir": tmp_path / "single"})
    script = tmp_path / "flat_sync.py"
    script.write_text(FLAT_SYNC, encoding="utf-8")
    sets = [a for k, v in {**common, "output_dir": tmp_path / "flat"}.items() for a in ("--set", f"{k}={v}")]
    result = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                   "train", "--config", "tiny-cpu", *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # files, not stdout: the ranks' writes to one pipe may interleave
        assert (tmp_path / f"rank{rank}.txt").read_text() == "gradients in flat buffers: True"
    expected, actual = _adapter(tmp_path / "single"), _adapter(tmp_path / "flat")
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name
    losses = [[line.split()[3] for line in out.splitlines() if line.startswith("step ")] for out in (single.stdout, result.stdout)]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # steps 2 and 4 logged, by rank 0 only


def _assert_same_training(tiny_config, common: dict, variant: dict, digits: int = 4, atol: float = 1e-5):
    """Train with `common`, then with `common` + `variant`: same losses (to `digits`) and adapters (to `atol`)."""
    root = Path(tiny_config().output_dir)
    plain = train(tiny_config(**common, output_dir=str(root / "plain")))
    changed = train(tiny_config(**common, **variant, output_dir=str(root / "variant")))
    assert [round(h["loss"], digits) for h in changed.history] == [round(h["loss"], digits) for h in plain.history]
    a, b = _adapter(plain.output_dir), _adapter(changed.output_dir)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), name
    return changed


def test_padding_free_training_matches_padded_training(tiny_config):
    _assert_same_training(tiny_config, {**SMALL, "max_steps": 4, "lora_dropout": 0.0}, {"padding_free": True})


def test_answer_logits_only_gives_the_same_training(tiny_config):
    common = {**SMALL, "max_steps": 3, "lora_dropout": 0.0, "padding_free": True}
    _assert_same_training(tiny_config, common, {"answer_logits_only": True})
    with pytest.raises(InputError, match="needs padding_free=true"):
        tiny_config(answer_logits_only=True)


def test_compiled_decoder_layers_give_the_same_training(tiny_config):
    """compile=true (torch.compile of each decoder layer, dynamic shapes) trains the same model, with
    packed batches whose length changes every step."""
    common = {**SMALL, "max_steps": 3, "lora_dropout": 0.0, "padding_free": True}
    compiled = _assert_same_training(tiny_config, common, {"compile": True}, digits=3, atol=1e-4)
    layers = compiled.model.get_base_model().model.layers
    assert all(getattr(layer, "_compiled_call_impl", None) is not None for layer in layers)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_modes_give_the_same_training(tiny_config, checkpointing):
    """fused_rms_norm and fused_lora (with LoRA dropout on: the masks are drawn in the same order), also
    under gradient checkpointing, which runs the patched forwards again in backward (the T4 configs)."""
    common = {**SMALL, "max_steps": 3, "padding_free": True, "gradient_checkpointing": checkpointing}
    _assert_same_training(tiny_config, common, {"fused_rms_norm": True, "fused_lora": True})


@pytest.mark.parametrize("checkpointed, recomputed", [(None, 2), (1, 1), (0, 0)])
def test_checkpointed_layers_recompute_only_the_first_layers(tiny_config, monkeypatch, checkpointed, recomputed):
    """checkpointed_layers=N: the first N decoder layers recompute in the backward, the others keep their
    activations. Counted: each micro-batch of one step runs the tiny model's 2 MLPs once forward, again in each
    recomputed layer."""
    from transformers.models.mistral.modeling_mistral import MistralMLP

    calls = []
    forward = MistralMLP.forward
    monkeypatch.setattr(MistralMLP, "forward", lambda self, x: calls.append(1) or forward(self, x))
    cfg = tiny_config(**{**SMALL, "max_steps": 1, "micro_batch_size": 4, "gradient_checkpointing": True,
                         "checkpointed_layers": checkpointed})
    train(cfg)
    assert cfg.gradient_accumulation_steps == 2 and len(calls) == 2 * (2 + recomputed)


def test_partly_checkpointed_training_is_the_plain_training(tiny_config):
    """Recomputing some layers and keeping the others' activations learns what keeping them all learns (LoRA
    dropout on: the recompute draws the same masks)."""
    common = {**SMALL, "max_steps": 3}  # tiny-cpu keeps every activation
    _assert_same_training(tiny_config, common, {"gradient_checkpointing": True, "checkpointed_layers": 1})
    with pytest.raises(InputError, match="'checkpointed_layers' = -1: must be >= 0"):
        tiny_config(gradient_checkpointing=True, checkpointed_layers=-1)


def test_varlen_training_plumbing_on_cpu(tiny_config, monkeypatch):
    """The loop passes each packed micro-batch's row bounds to the varlen attention (here a reference
    kernel, the real one needs a GPU) and trains what sdpa's block mask trains; afterwards the model
    attends with sdpa again, for generation."""
    import tangpoem.fast.attention as attention
    from attention_helpers import reference_kernel

    rows_seen = []

    def kernel(query, key, value, bounds, longest, scale):
        rows_seen.append(len(bounds) - 1)
        return reference_kernel(query, key, value, bounds, longest, scale)

    monkeypatch.setattr(attention, "varlen_kernel", kernel)
    monkeypatch.setattr(attention, "check_varlen_device", lambda device: None)
    common = {**SMALL, "max_steps": 3, "lora_dropout": 0.0, "padding_free": True}
    varlen = _assert_same_training(tiny_config, common, {"varlen_attention": True})
    layers = len(varlen.model.get_base_model().model.layers)
    cfg = tiny_config(**common)
    assert rows_seen == [cfg.micro_batch_size] * (3 * cfg.batch_size // cfg.micro_batch_size * layers)
    assert varlen.model.get_base_model().config._attn_implementation == "sdpa"


def test_balancing_swaps_rows_until_micro_batches_hold_equal_tokens():
    from tangpoem.fast.balance import balance_micro_batches

    lengths = [1, 1, 1, 1, 3, 3, 3, 3, 5, 7]
    balanced = balance_micro_batches(range(10), lengths, size=4)
    assert sorted(balanced) == list(range(10)) and balanced[8:] == [8, 9]  # a trailing short micro-batch stays
    assert [sum(lengths[r] for r in balanced[i : i + 4]) for i in (0, 4)] == [8, 8]
    assert balance_micro_batches([0, 1, 2, 3], lengths, size=4) == [0, 1, 2, 3]


@pytest.mark.parametrize("micro_batch_size", [4, 16])
def test_balanced_steps_keep_each_row_once_a_step_and_even_out_tokens(tiny_config, micro_batch_size):
    from tangpoem.data import load_train_rows
    from tangpoem.fast.graphs import static_shape
    from tangpoem.model import load_tokenizer
    from tangpoem.tokens import encode_training_rows
    from tangpoem.train import epoch_order, rows_of_step

    plain = tiny_config(num_train_data=200, batch_size=16, micro_batch_size=micro_batch_size)  # 13 steps, the last of 8 rows
    balanced = tiny_config(num_train_data=200, batch_size=16, micro_batch_size=micro_batch_size, balanced_steps=True)
    dataset = encode_training_rows(load_tokenizer(plain), load_train_rows(plain.data_dir, 200), plain.cutoff_len)
    index = {id(row): i for i, row in enumerate(dataset.rows)}

    def micro_batch_tokens(cfg):
        order = epoch_order(cfg, dataset.lengths)  # a resumed run computes the same order from scratch
        steps = [[index[id(r)] for r in rows_of_step(dataset, cfg, order, step)] for step in range(13)]
        assert [len(s) for s in steps] == [16] * 12 + [8]
        assert sorted(r for s in steps for r in s) == list(range(200))  # every row once in the epoch
        full = [s[i : i + micro_batch_size] for s in steps for i in range(0, len(s), micro_batch_size)]
        full = [m for m in full if len(m) == micro_batch_size]  # what the graphs capture
        tokens = [sum(len(dataset.rows[r].input_ids) for r in m) for m in full]
        shape = static_shape([[dataset.rows[r] for r in m] for m in full], multiple=1)
        return steps, tokens, shape

    plain_steps, plain_tokens, plain_shape = micro_batch_tokens(plain)
    balanced_steps, balanced_tokens, balanced_shape = micro_batch_tokens(balanced)
    if micro_batch_size == 16:  # the last step's 8 rows are no full micro-batch: left as shuffled
        assert balanced_steps[12] == plain_steps[12]
    assert max(balanced_tokens) < max(plain_tokens) and max(balanced_tokens) - min(balanced_tokens) < max(plain_tokens) - min(plain_tokens)
    assert max(balanced_tokens) <= -(-sum(balanced_tokens) // len(balanced_tokens)) + 2, (plain_tokens, balanced_tokens)
    assert balanced_shape.length < plain_shape.length  # what every captured micro-batch is padded to
    assert micro_batch_tokens(balanced)[0] == balanced_steps


def test_a_checkpoint_without_loss_scaling_resumes_into_a_run_with_it(tiny_config, monkeypatch):
    """bf16 on an A100 before a Colab disconnect, fp16 on a T4 after (compute_dtype auto): the checkpoint holds
    no scaler state, and the resumed run's loss scaler starts fresh instead of refusing the empty state."""
    import tangpoem.train as train_module

    import shutil

    cfg = tiny_config(**{**SMALL, "max_steps": 6, "save_steps": 2})
    train(cfg)
    shutil.rmtree(list_checkpoints(cfg.output_dir)[-1])  # as if stopped after step 4
    scalers = []
    real = torch.amp.GradScaler

    def scaling_on(device, enabled=True):  # as on a T4 in fp16; GradScaler works on the CPU too
        scalers.append(real(device, enabled=True))
        return scalers[-1]

    monkeypatch.setattr(train_module.torch.amp, "GradScaler", scaling_on)
    result = train(cfg, resume=True)
    assert scalers and scalers[0].is_enabled() and [h["step"] for h in result.history][-3:] == [4, 5, 6]


def test_under_balanced_steps_a_resume_with_another_micro_batch_size_is_refused(tiny_config):
    """balanced_steps orders an epoch's rows by micro-batch: another micro_batch_size mid-epoch would repeat some
    rows and skip others. Without balancing the order does not depend on it, and the resume goes on."""
    import shutil

    cfg = tiny_config(**{**SMALL, "num_train_data": 32, "max_steps": 4, "save_steps": 2, "balanced_steps": True})
    train(cfg)
    shutil.rmtree(list_checkpoints(cfg.output_dir)[-1])  # as if stopped after step 2
    cfg.micro_batch_size = 2
    with pytest.raises(InputError, match=r"micro_batch_size: 4 in checkpoint-2, 2 now"):
        train(cfg, resume=True)
    cfg.balanced_steps = False
    with pytest.raises(InputError) as refused:
        train(cfg, resume=True)
    assert "micro_batch_size" not in str(refused.value) and "balanced_steps" in str(refused.value)
