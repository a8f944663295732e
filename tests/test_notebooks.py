"""The teaching notebooks: committed clean, one parameters cell of plain values, short cells; the
headless runner's errors; and the whole sequence executed with papermill on tangpoem-nano."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from tangpoem.cli import main
from tangpoem.notebooks import declared_parameters, find_notebooks

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = find_notebooks(REPO / "notebooks")
MAX_CELL_LINES = 12
EXPECTED = ["01_setup", "02_model_and_tokenizer", "03_decoding", "04_data_and_tokens", "05_finetune",
            "06_generate", "07_grade"]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def test_the_seven_notebooks_in_order():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for index, cell in enumerate(read(path).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_plain_values(path):
    import papermill

    cells = [c for c in read(path).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)  # a plain value, nothing computed
    # papermill's own reader skips lines with a second "=" (e.g. in a comment): it must see every parameter
    assert set(papermill.inspect_notebook(str(path))) == declared_parameters(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_are_short_steps_with_prose_first(path):
    cells = read(path).cells
    assert cells[0].cell_type == "markdown"
    for index, cell in enumerate(cells):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            lines = [line for line in cell.source.splitlines() if line.strip()]
            assert len(lines) <= MAX_CELL_LINES, f"{path.name} cell {index}: {len(lines)} lines"
            assert not re.search(r"^\s*(def|class|for|while) ", cell.source, re.M), f"{path.name} cell {index}: logic belongs in tangpoem"


def test_notebooks_match_their_generator():
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO / "scripts" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, cells in module.NOTEBOOKS.items():
        built = nbformat.writes(module.build(cells)) + "\n"
        assert (REPO / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8") == built, \
            f"{name}.ipynb differs from scripts/build_notebooks.py; run it"


def test_config_knobs_are_unset_and_say_the_homeworks_value():
    """Every config knob of a parameters cell is None (it keeps the config file's value), and its comment
    gives the homework's value (Config's default) and the field's help text."""
    from tangpoem.config import FIELDS, Config

    for path in NOTEBOOKS:
        cell = next(c for c in read(path).cells if "parameters" in c.metadata.get("tags", []))
        lines = {line.split(" = ")[0]: line for line in cell.source.splitlines()}
        for node in ast.parse(cell.source).body:
            name = node.targets[0].id
            if name in FIELDS:
                assert ast.literal_eval(node.value) is None, f"{path.name}: {name}"
                assert f"homework: {getattr(Config(), name)!r}; {FIELDS[name].metadata['help']}" in lines[name], name


# ----------------------------------------------------------------------------- the runner's errors


def test_unknown_parameter_is_one_line_and_status_2(tmp_path, capsys):
    code = main(["notebooks", "run", "--config", "nano-cpu", "--out", str(tmp_path), "-p", "no_such_knob", "1"])
    assert code == 2
    assert capsys.readouterr().err == "error: -p no_such_knob: unknown parameter (not a config key, and no notebook declares it)\n"


def test_missing_config_and_bad_value_are_status_2(tmp_path, capsys):
    assert main(["notebooks", "run", "--config", "no-such-config", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no-such-config: config file not found (a path, or one of: breeze-colab-t4, ")
    assert main(["notebooks", "run", "--config", "nano-cpu", "--out", str(tmp_path), "-p", "top_p", "2"]) == 2
    assert capsys.readouterr().err == "error: config key 'top_p' = 2.0: must be in (0, 1]\n"


def test_missing_notebooks_dir_is_status_2(tmp_path, capsys):
    assert main(["notebooks", "run", "--out", str(tmp_path / "o"), "--notebooks", str(tmp_path)]) == 2
    assert "no numbered notebooks" in capsys.readouterr().err


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("config_file = None\nmessage = 'hello'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_failing_cell_names_notebook_and_cell_and_stops(tmp_path, capsys):
    _notebook(tmp_path / "01_ok.ipynb", "print(message)")
    _notebook(tmp_path / "02_fails.ipynb", "x = 1", "raise ValueError('the cell failed')")
    _notebook(tmp_path / "03_never.ipynb", "print('not reached')")
    out = tmp_path / "out"
    code = main(["notebooks", "run", "--config", "nano-cpu", "--out", str(out), "--notebooks", str(tmp_path),
                 "-p", "message", "from the command line"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: 02_fails.ipynb: cell 4 (In [4]): ValueError: the cell failed")
    assert str(out / "02_fails.ipynb") in err
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in index["notebooks"]] == ["ok", "failed", "not run"]
    first = read(out / "01_ok.ipynb")
    assert "from the command line" in first.cells[-1].outputs[0].text  # -p reached the notebook


@pytest.mark.slow
def test_the_hub_token_never_reaches_the_notebook(tmp_path, monkeypatch):
    token = "hf_FAKEtoken1234567890abcdefSECRET"
    monkeypatch.setenv("HF_TOKEN", token)
    only = tmp_path / "nbs"
    only.mkdir()
    shutil.copy(REPO / "notebooks" / "01_setup.ipynb", only)
    out = tmp_path / "out"
    code = main(["notebooks", "run", "--out", str(out), "--notebooks", str(only),
                 "-p", "model_name_or_path", "taide/TAIDE-LX-7B-Chat", "-p", "load_in_4bit", "false"])
    assert code == 0
    executed = (out / "01_setup.ipynb").read_text(encoding="utf-8")
    assert "HF_TOKEN is set in the environment" in executed
    assert token not in executed and token[3:15] not in executed
    for path in out.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(encoding="utf-8", errors="replace"), path


def test_hub_login_headless_without_a_token_does_not_wait(monkeypatch):
    import getpass

    from tangpoem import lessons as notebook

    monkeypatch.delenv("HF_TOKEN", raising=False)

    def no_stdin(prompt: str = "") -> str:
        raise RuntimeError("no stdin")  # what papermill's kernel does (StdinNotImplementedError)

    monkeypatch.setattr(getpass, "getpass", no_stdin)
    assert "set HF_TOKEN" in notebook.hub_login("taide/TAIDE-LX-7B-Chat")
    assert "no login needed" in notebook.hub_login("MediaTek-Research/Breeze-7B-Instruct-v0_1")


# ----------------------------------------------------------------------------- the whole sequence


@pytest.mark.slow
def test_the_whole_sequence_runs_headless_on_nano(tmp_path, capsys):
    """CI's smoke run: nano-cpu with a short fine-tune (64 rows, 4 steps); the instructor default stays the homework's."""
    out = tmp_path / "run-nano"
    started = time.perf_counter()
    code = main(["notebooks", "run", "--config", "nano-cpu", "--out", str(out), "-p", "num_train_data", "64",
                 "-p", "max_steps", "4", "-p", "save_steps", "2", "-p", "logging_steps", "1"])
    seconds = time.perf_counter() - started
    print(f"notebook sequence: {seconds:.0f} s")
    assert code == 0, capsys.readouterr().err

    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    assert [Path(r["notebook"]).stem for r in index["notebooks"]] == EXPECTED
    assert all(r["status"] == "ok" for r in index["notebooks"])
    assert (out / "index.md").is_file() and (out / "config.yaml").is_file()
    for name in EXPECTED:
        for cell in read(out / f"{name}.ipynb").cells:
            assert all(o.output_type != "error" for o in cell.get("outputs", [])), name

    run = out / "run"
    from tangpoem.data import load_test_rows

    lines = (run / "results.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 15
    for number, (line, row) in enumerate(zip(lines, load_test_rows()), start=1):
        assert line.startswith(f"{number}. {row.input}") and len(line) > len(f"{number}. {row.input}"), line
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert len(json.loads((run / "loss_history.json").read_text(encoding="utf-8"))) == 4

    grades = json.loads((run / "grades.json").read_text(encoding="utf-8"))
    assert grades["files"][0]["status"] == "graded" and len(grades["files"][0]["poems"]) == 15
    graded = read(out / "07_grade.ipynb")
    tables = [o.data["text/markdown"] for c in graded.cells for o in c.get("outputs", [])
              if o.output_type == "execute_result" and "text/markdown" in o.data]
    assert any("| mean |" in t and "charF1" in t for t in tables)

    figures = {p.stem: p for p in (run / "figures").glob("*.png")}
    assert set(figures) == {"03_temperature", "03_top_k_top_p", "04_lengths", "04_label_mask", "05_loss", "05_validation"}
    assert [e["step"] for e in json.loads((run / "eval_history.json").read_text(encoding="utf-8"))] == [2, 4]  # nano-cpu: val_size 64
    for path in figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    before = json.loads((run / "demo_before.json").read_text(encoding="utf-8"))
    assert len(before["poems"]) == 3


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    assert main(["notebooks", "run", "--config", "nano-cpu", "--out", str(a_file)]) == 2
    assert capsys.readouterr().err == f"error: --out {a_file}: a file is in the way; choose a folder\n"
    assert a_file.read_text() == "keep me"
