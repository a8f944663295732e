"""The README stays short, generated where it can be, and names every file a reader meets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
sys.path.insert(0, str(REPO / "scripts"))
import build_readme  # noqa: E402

from tangpoem.config import FIELDS  # noqa: E402
from tangpoem.resources import REPO_URL  # noqa: E402


def test_the_readme_is_at_most_250_lines():
    assert len(README.splitlines()) <= 250


def test_the_generated_blocks_are_what_the_script_writes():
    """The key table comes from the fields' help, the notebook links and install line from REPO_URL."""
    assert build_readme.render(README) == README, "run python scripts/build_readme.py"


def test_the_key_table_has_every_key_with_its_help():
    table = README.split("<!-- begin config keys")[1].split("<!-- end config keys")[0]
    keys = re.findall(r"^\|[^|]*\| `(\w+)` \|", table, re.M)
    assert keys == [k for section in build_readme.SECTIONS for k in build_readme.keys_of(section)]
    assert sorted(keys) == sorted(FIELDS)
    for key in keys:
        assert FIELDS[key].metadata["help"].replace("|", "\\|") in table, key


def test_every_github_link_is_the_one_repository_url():
    """A fork changes REPO_URL and re-runs the scripts; no other copy of the URL is left in the README."""
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", README):
        assert url == REPO_URL
    for url in re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", README):
        assert url == REPO_URL.removeprefix("https://github.com/")


def test_the_file_map_names_every_file():
    """Each module, script, config and doc has its caption in the file map."""
    files = README.split("## Files\n")[1].split("\n## ")[0]
    named = set(re.findall(r"[\w-]+\.(?:py|sh|md)|[\w-]+/", files))
    wanted = [p for p in [*(REPO / "tangpoem").glob("*.py"), *(REPO / "tangpoem" / "fast").glob("*.py"),
                          *(REPO / "tangpoem" / "grade").glob("*.py"), *(REPO / "scripts").iterdir(),
                          *(REPO / "docs").glob("*.md")] if p.is_file() and p.name != "__init__.py"]
    assert wanted and not [p.relative_to(REPO).as_posix() for p in wanted if p.name not in named]
    for config in (REPO / "configs").glob("*.yaml"):
        assert config.stem in files, config.name
    for folder in ("fast/", "grade/", "nano_model/", "fonts/", "templates/", "configs/", "notebooks/", "benchmarks/", "tests/"):
        assert folder in named, folder


def test_the_speed_figures_in_the_readme_are_the_committed_runs():
    """The speed table's figures and ratios are the committed runs', rounded as shown."""
    import json

    run = json.loads((REPO / "benchmarks" / "results" / "nvidia-h100-80gb-hbm3.json").read_text(encoding="utf-8"))
    figures, ratios = run["figures"], run["ratios"]
    speed = README.split("## GPU speed\n")[1].split("\n## ")[0]
    assert f"run 15 at {run['commit']}" in speed and run["one_machine"]
    for value in (figures["train_cli"]["loop_seconds"], figures["train_homework"]["seconds"], figures["train_trl"]["seconds"],
                  figures["train_unsloth_bf16"]["seconds"], figures["train_unsloth_fp16"]["seconds"], figures["t4_colab"]["loop_seconds"],
                  figures["t4_profile"]["loop_seconds"]):
        assert f"{value:.1f} s" in speed or f"{value:.2f} s" in speed, value
    for key in ("train_vs_homework", "train_vs_trl", "train_vs_unsloth_bf16", "train_vs_unsloth_fp16", "t4_colab_vs_homework", "t4_colab_vs_unsloth_fp16",
                "t4_vs_homework", "t4_vs_unsloth_fp16", "generate_vs_homework_first_call"):
        assert f"{ratios[key]:.1f}×" in speed or f"{ratios[key]:.0f}×" in speed, key
    for stage in ("t4_colab", "t4_profile"):
        assert f"{figures[stage]['loop_seconds']:.1f} s, {figures[stage]['peak_gb']:.1f} GB" in speed, stage
    first, second = (call["generate_seconds"] for call in figures["generate"]["calls"])
    assert f"{first:.2f} s first call, {second:.2f} s second" in speed
    assert f"{figures['generate_homework']['seconds_15']:.0f} s (from 3 prompts" in speed
    # run 12: two GPUs
    ddp = json.loads((REPO / "benchmarks" / "results" / "nvidia-h200-x2-ddp.json").read_text(encoding="utf-8"))
    assert f"run 12 at {ddp['commit']}" in speed
    assert (f"{ddp['ddp_2_gpus']['train_seconds']:.1f} s, {ddp['speedup_train_seconds']:.2f}× one GPU's "
            f"{ddp['one_gpu']['train_seconds']:.1f} s") in speed
