"""A pip install from the repository, used as students and instructors use it: the wheel is built, installed
into a fresh environment, and run from a folder that is not a checkout. Its configs and notebooks must come
from the wheel itself."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the fresh environment's bin folder, the environment variables to run it with). The environment gets
    tangpoem from the wheel only; its dependencies come from this environment's site-packages through a .pth
    line (a path line: that folder's own .pth files, such as this checkout's editable install, are not run)."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(REPO)],
         cwd=root, env=os.environ.copy())
    wheel = next((root / "dist").glob("tangpoem-*.whl"))
    venv.EnvBuilder(with_pip=True).create(root / "env")
    python = root / "env" / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, os.environ.copy()).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=root, env=os.environ.copy())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{root / 'env' / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return root / "env" / "bin", env


def test_the_wheel_carries_configs_and_notebooks(installed, tmp_path):
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import tangpoem, tangpoem.resources as r; print(tangpoem.__file__); "
                  "print(r.configs_dir()); print(sorted(p.name for p in r.notebooks_dir().glob('*.ipynb')))"], tmp_path, env)
    module, configs, notebooks = where.stdout.splitlines()
    assert str(bin_dir.parent) in module and configs.endswith("tangpoem/shipped/configs") and str(bin_dir.parent) in configs
    assert notebooks.startswith("['01_setup.ipynb'") and notebooks.count(".ipynb") == 7


@pytest.mark.slow
def test_train_generate_and_the_notebooks_run_from_the_installed_wheel(installed, tmp_path):
    bin_dir, env = installed
    elsewhere = tmp_path / "elsewhere"  # not a checkout: nothing of the repository is here
    elsewhere.mkdir()
    small = ["--set", "max_steps=2", "--set", "num_train_data=32", "--set", "save_steps=2"]
    _run([str(bin_dir / "tangpoem"), "train", "--config", "nano-cpu", *small, "--set", "output_dir=run"], elsewhere, env)
    assert (elsewhere / "run" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    generated = _run([str(bin_dir / "tangpoem"), "generate", "--config", "nano-cpu", "--set", "output_dir=run",
                      "--set", "max_new_tokens=8"], elsewhere, env)
    assert (elsewhere / "run" / "results.txt").read_text(encoding="utf-8").count("\n") == 15, generated.stdout
    ran = _run([str(bin_dir / "tangpoem"), "notebooks", "run", "--config", "nano-cpu", "--out", "nb",
                "-p", "max_steps", "2", "-p", "num_train_data", "32", "-p", "max_new_tokens", "8"], elsewhere, env, timeout=1500)
    assert f"notebooks: 7 from {bin_dir.parent}" in ran.stdout and "tangpoem/shipped/notebooks" in ran.stdout
    assert (elsewhere / "nb" / "run" / "results.txt").is_file() and (elsewhere / "nb" / "07_grade.ipynb").is_file()


def test_standing_in_a_checkout_runs_its_notebooks(tmp_path, monkeypatch):
    from tangpoem.notebooks import find_notebooks
    from tangpoem.resources import notebooks_dir

    monkeypatch.chdir(REPO)
    assert find_notebooks()[0].parent == REPO / "notebooks"
    monkeypatch.chdir(tmp_path)
    assert find_notebooks()[0].parent == notebooks_dir()
