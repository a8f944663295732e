"""`tangpoem export`: the adapter with a model card, the merged model that `transformers` loads alone and that
writes the adapter's greedy tokens, the Hub upload's folder (offline), and bad input as one line, exit 2."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tangpoem.cli import main
from tangpoem.config import load_config
from tangpoem.data import load_test_rows
from tangpoem.export import export, upload_plan
from tangpoem.generate import generate, load_for_generation
from tangpoem.io import umask_mode
from tangpoem.prompt import INSTRUCTION, course_prompt
from tangpoem.train import train

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"tiny-mistral": "tiny-cpu", "tiny-llama": "tiny-cpu", "tangpoem-nano": "nano-cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, course_dir):
    """name -> a checkpoint of real training (2 steps, a large learning rate, so that the adapter matters),
    trained once per module."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            output_dir = tmp_path_factory.mktemp(name) / "run"
            made[name] = train(load_config(CONFIGS[name], {
                "model_name_or_path": name, "output_dir": str(output_dir), "data_dir": str(course_dir),
                "num_train_data": 16, "max_steps": 2, "save_steps": 2, "micro_batch_size": 8, "batch_size": 8,
                "learning_rate": 2e-2, "warmup_steps": 0, "lora_dropout": 0.0})).checkpoints[-1]
        return made[name]

    return make


@pytest.fixture(params=list(CONFIGS))
def checkpoint(request, trained) -> Path:
    return trained(request.param)


def greedy(cfg, **overrides):
    return load_config(None, {**cfg.to_dict(), "do_sample": False, "max_new_tokens": 24, "min_new_tokens": 0,
                              "stop_by_probability": False, **overrides})


def card_code(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)


def test_merged_model_loads_alone_and_writes_the_adapters_greedy_tokens(checkpoint, tmp_path, course_dir):
    """float32, so that W + B·A and W·x + B·A·x differ by rounding far below any logit gap: 8 test poems,
    greedy, are the same text from the merged folder (its own tokenizer) as from base + adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export(checkpoint, tmp_path / "merged", merged=True, dtype="float32")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the temp folder was renamed
    merged = AutoModelForCausalLM.from_pretrained(out)  # transformers alone: no peft, no tangpoem
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert getattr(merged.config, "quantization_config", None) is None
    cfg = greedy(load_config(None, torch.load(checkpoint / "training_state.pt", weights_only=False)["config"]),
                 data_dir=str(course_dir))
    rows = load_test_rows(course_dir)[:8]
    model, base_tokenizer, _ = load_for_generation(cfg, checkpoint)
    expected = generate(model, base_tokenizer, rows, cfg, progress=False)
    assert generate(merged, tokenizer, rows, cfg, progress=False) == expected
    with model.disable_adapter():  # and the adapter changed the poems: the merge is not the base model
        assert generate(model, base_tokenizer, rows, cfg, progress=False) != expected
    generation = merged.generation_config
    assert (generation.temperature, generation.top_p, generation.no_repeat_ngram_size) == (0.1, 0.3, 3)


def test_bf16_merged_is_half_the_size_and_close_to_the_adapter(checkpoint, tmp_path, course_dir):
    from transformers import AutoModelForCausalLM

    full = export(checkpoint, tmp_path / "fp32", merged=True, dtype="float32")
    half = export(checkpoint, tmp_path / "bf16", merged=True, dtype="bfloat16")
    size = {p: (p / "model.safetensors").stat().st_size for p in (full, half)}
    assert 0.45 < size[half] / size[full] < 0.55
    a = AutoModelForCausalLM.from_pretrained(full)
    b = AutoModelForCausalLM.from_pretrained(half)
    assert {p.dtype for p in b.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[1] + list(range(10, 40))])
    with torch.no_grad():
        reference, rounded = a(ids).logits, b(ids).logits.float()
    assert (rounded - reference).abs().max() < 0.05 * reference.abs().max()


def test_adapter_export_card_and_the_cards_code_runs(checkpoint, tmp_path):
    """The adapter's two files as trained, a README whose metadata the Hub's parser reads, and whose Python
    block, run as written, loads the export with peft and writes a poem after the demo couplet."""
    from huggingface_hub import ModelCard

    out = export(checkpoint, tmp_path / "adapter")
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").read_bytes() == (checkpoint / "adapter_model.safetensors").read_bytes()
    base = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    trained_on = torch.load(checkpoint / "training_state.pt", weights_only=False)["config"]["model_name_or_path"]
    assert base == trained_on  # the built-in's name, not the folder it was loaded from
    readme = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.language == ["zh"]
    assert course_prompt(INSTRUCTION, "{first couplet 上聯}") in readme
    assert "| LoRA rank r / alpha / dropout | " in readme and "| steps | mean loss (answer tokens) |" in readme
    validated = (checkpoint / "eval.json").is_file()  # nano-cpu validates at each save, tiny-cpu does not
    assert ("No evaluation figures" in readme) is not validated and ("Validation during training" in readme) is validated
    code = card_code(readme)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the card's own example
    assert namespace["prompt"] == course_prompt(INSTRUCTION, "相見時難別亦難，東風無力百花殘。")
    assert printed.getvalue().startswith("相見時難別亦難，東風無力百花殘。")
    assert all(p.stat().st_mode & 0o777 == umask_mode() for p in out.iterdir())  # readable as any new file


def test_merged_card_code_runs_with_transformers_alone(trained, tmp_path):
    out = export(trained("tangpoem-nano"), tmp_path / "merged", merged=True, dtype="bfloat16")
    code = card_code((out / "README.md").read_text(encoding="utf-8"))
    assert "peft" not in code and "tangpoem" not in code
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102
    assert printed.getvalue().startswith("相見時難別亦難，東風無力百花殘。")


# ----------------------------------------------------------------------------- the card's evaluation figures


def test_grades_of_the_checkpoint_go_on_the_card(trained, tmp_path, capsys):
    """A grades.json from the real grader (a perfect results.txt against the course's GT) on the card."""
    from grade_helpers import FIXTURES, GT, TEST

    assert main(["grade", str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--json"]) == 0
    grades = tmp_path / "grades.json"
    grades.write_text(capsys.readouterr().out, encoding="utf-8")
    out = export(trained("tiny-mistral"), tmp_path / "adapter", grades=grades)
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "| charF1 | 1.000 |" in readme and "from `grades.json`" in readme and str(grades) not in readme


# ----------------------------------------------------------------------------- the Hub, offline


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tangpoem.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_dry_run_lists_the_folder_it_would_upload_and_where(trained, tmp_path, capsys):
    code = main(["export", "--adapter", str(trained("tiny-mistral")), str(tmp_path / "out"),
                 "--push-to-hub", "someone/tang-poems", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "would upload to https://huggingface.co/someone/tang-poems" in printed
    plan = upload_plan(tmp_path / "out")
    assert [name for name, _ in plan] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name, size in plan:
        assert f"  {name}  ({size:,} bytes)" in printed
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "PeftModel.from_pretrained(base, \"someone/tang-poems\")" in card  # the card names where it will live


def test_an_upload_that_cannot_reach_the_hub_is_one_line_and_never_shows_the_token(trained, tmp_path):
    """A closed port on 127.0.0.1 as the Hub: exit 1, the export kept, the token nowhere in the output."""
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    token = "hf_" + "x" * 34
    done = run_cli("export", "--adapter", str(trained("tiny-mistral")), str(tmp_path / "out"), "--push-to-hub", "me/poems",
                   env={"HF_TOKEN": token, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_ETAG_TIMEOUT": "2",
                        "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --push-to-hub me/poems: the upload failed")
    assert token not in done.stdout + done.stderr
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_an_upload_without_a_token_says_how_to_log_in(trained, tmp_path):
    done = run_cli("export", "--adapter", str(trained("tiny-mistral")), str(tmp_path / "out"), "--push-to-hub", "me/poems",
                   env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --push-to-hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a write token)"


# ----------------------------------------------------------------------------- bad input: one line, exit 2, nothing written


def bad(capsys, *args: str) -> str:
    code = main(["export", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_leaves_nothing(trained, tmp_path, capsys):
    ckpt = str(trained("tiny-mistral"))
    out = tmp_path / "out"
    assert "not a LoRA adapter folder (adapter_config.json missing)" in bad(capsys, "--adapter", str(tmp_path), str(out))
    assert "no such folder" in bad(capsys, "--adapter", str(tmp_path / "nowhere"), str(out))
    assert "holds the checkpoint itself" in bad(capsys, "--adapter", ckpt, str(Path(ckpt).parent))
    assert "goes with --push-to-hub" in bad(capsys, "--adapter", ckpt, str(out), "--dry-run")
    assert "not a Hub repository id" in bad(capsys, "--adapter", ckpt, str(out), "--push-to-hub", "a b/c", "--dry-run")
    for merged in ([], ["--merged"]):
        assert "config key 'model_name_or_path' = '/no/such/base': no such folder" in bad(
            capsys, "--adapter", ckpt, str(out), "--set", "model_name_or_path=/no/such/base", *merged)
    assert "--grades" in bad(capsys, "--adapter", ckpt, str(out), "--grades", str(tmp_path / "none.json"))
    assert sorted(os.listdir(tmp_path)) == []  # no OUT, no half-written temp folder beside it
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "exists and is not empty; choose a new folder, or pass --force" in bad(capsys, "--adapter", ckpt, str(out))
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", "--adapter", ckpt, str(out), "--force"]) == 0
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_a_4bit_adapter_is_not_merged_on_a_cpu(trained, tmp_path, capsys):
    """Its NF4 weights are dequantized on a GPU; on a CPU the export says so rather than merging other weights."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the merge runs there (tests/test_gpu.py)")
    err = bad(capsys, "--adapter", str(trained("tiny-mistral")), str(tmp_path / "out"), "--merged",
              "--set", "load_in_4bit=true")
    assert "trained on the 4-bit (NF4) base" in err and "GPU" in err


def test_the_checkpoints_validation_figures_go_on_the_card(trained, tmp_path):
    checkpoint = trained("tangpoem-nano")  # nano-cpu validates on course rows it does not train on, at each save
    figures = json.loads((checkpoint / "eval.json").read_text(encoding="utf-8"))
    export(checkpoint, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "Validation during training, at this checkpoint's step: 64 course rows" in card
    assert f"| val_loss | {figures['val_loss']:.4f} |" in card and f"| rhyme | {figures['rhyme']:.3f} |" in card
    assert "No evaluation figures were saved" not in card


def test_an_adapter_without_its_training_state_gets_a_card_of_what_it_records(trained, tmp_path):
    """A bare adapter (adapter_config.json and weights, no training_state.pt): the card takes LoRA's rank, alpha
    and dropout from the adapter itself and claims no training data or 4-bit it cannot know."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(trained("tiny-mistral") / name, bare / name)
    adapter = json.loads((bare / "adapter_config.json").read_text(encoding="utf-8"))
    readme = (export(bare, tmp_path / "out") / "README.md").read_text(encoding="utf-8")
    assert f"| LoRA rank r / alpha / dropout | {adapter['r']} / {adapter['lora_alpha']} / {adapter['lora_dropout']} |" in readme
    assert "not recorded (the adapter came without tangpoem's `training_state.pt`)" in readme
    assert "rows of the course's" not in readme and "QLoRA" not in readme and "qlora" not in readme
