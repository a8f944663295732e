"""`tangpoem notebooks run`: execute the teaching notebooks in order, headless, with papermill.

Each notebook runs in a fresh kernel; they share state through files in one `output_dir`
(05 writes checkpoints, 06 reads them and writes results.txt, 07 grades it). The run writes into
OUT: the executed notebooks, `config.yaml` (the effective config), `index.json` / `index.md`
(what ran, how long, where the outputs are), `kernels.log` (what the kernel processes wrote to their own
stderr) and, by default, `OUT/run/` as the output_dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import unittest.mock
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from tangpoem.config import FIELDS, Config, effective_yaml, load_config
from tangpoem.data import resolve_data_dir
from tangpoem.errors import InputError
from tangpoem.io import atomic_write_json, atomic_write_text, display_path
from tangpoem.resources import NOTEBOOK_GLOB, checkout_notebooks, notebooks_dir

KERNEL_NAME = "python3"  # passed explicitly: a kernel name stored in a notebook may not exist here
# Nothing a kernel process writes to its own stderr is for the user, so it goes to OUT/kernels.log, not the runner's
# terminal: every kernel logged "Kernel is running over TCP without encryption" (papermill's kernels listen on
# 127.0.0.1 only, with signed messages), one slow to exit "KeyboardInterrupt caught in kernel", and libzmq at times
# aborts a kernel being shut down, after its notebook is saved ("Assertion failed: pfd.revents & POLLIN").
# A failing cell, or a kernel that died, is reported by NotebookFailed below.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
KERNEL_LOG = "kernels.log"
CONFIG_FILE_PARAMETER = "config_file"


@dataclass
class NotebookRun:
    notebook: str  # the source notebook
    output: str  # the executed copy, with its outputs
    status: str  # "ok" | "failed" | "not run"
    seconds: float = 0.0
    error: str | None = None


class NotebookFailed(Exception):
    """A cell raised: the message names the executed notebook, the cell and the error line."""

    def __init__(self, message: str, runs: list[NotebookRun]) -> None:
        super().__init__(message)
        self.runs = runs


def find_notebooks(folder: str | Path | None = None) -> list[Path]:
    """The numbered notebooks of `folder`; by default those of the checkout the user stands in, else the
    ones installed with tangpoem."""
    root = Path(folder) if folder else (checkout_notebooks() or notebooks_dir())
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of notebooks; pass --notebooks DIR")
    found = sorted(root.glob(NOTEBOOK_GLOB))
    if not found:
        raise InputError(f"{root}: no numbered notebooks (NN_name.ipynb) here; pass --notebooks DIR")
    return found


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's `parameters` cell (read with `ast`: papermill's own
    line-based reader skips a line whose comment holds an "=")."""
    import ast

    import nbformat

    try:
        cells = [c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    except (OSError, ValueError, AttributeError) as e:  # unreadable, not JSON, not a notebook
        raise InputError(f"{notebook}: not a readable notebook ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if len(cells) != 1:
        raise InputError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise InputError(f"{notebook}: parameters cell, line {e.lineno}: {e.msg}") from None
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def _plain(value: Any) -> Any:
    """A -p value from the command line ("64", "true", "[a, b]") as YAML reads it; other values as given."""
    return yaml.safe_load(value) if isinstance(value, str) and value != "" else value


def effective_config(config_path: str | Path | None, out_dir: Path, parameters: Mapping[str, Any]) -> Config:
    """The config file plus the config keys among `parameters` (-p), by the one rule; output_dir (default
    OUT/run), data_dir and results_dir made absolute, because the kernels run with OUT as their working directory."""
    overrides = {k: v for k, v in parameters.items() if k in FIELDS}
    cfg = load_config(config_path, overrides, source="-p")
    paths = {"output_dir": str(Path(overrides.get("output_dir") or out_dir / "run").resolve()),
             "data_dir": str(resolve_data_dir(cfg.data_dir).resolve())}
    if cfg.results_dir:
        paths["results_dir"] = str(Path(cfg.results_dir).resolve())
    return load_config(config_path, {**overrides, **paths}, source="-p")


def _kernel_manager(log_file: Path) -> type:
    """jupyter_client's kernel manager, with the kernel's stderr appended to `log_file`."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelWithLog(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log_file, "ab") as log:  # the kernel process holds its own copy of the descriptor
                await super().start_kernel(stderr=log, **kw)

    return KernelWithLog


def _failure(notebook: Path, output: Path, error: Exception) -> str:
    """One line: which notebook, which cell, what went wrong, where to look."""
    cell = getattr(error, "cell_index", None)
    count = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    evalue = (str(evalue).strip().splitlines() or [""])[-1]
    # 1-based, counting the cell papermill injects after `parameters`, as in the executed copy
    where = f"cell {cell + 1} (In [{count}])" if cell is not None else "before any cell ran"
    return f"{notebook.name}: {where}: {ename}: {evalue} (the failing cell is marked in {output})"


def write_index(out_dir: Path, cfg: Config, runs: list[NotebookRun]) -> None:
    """index.json and index.md: what ran, how long, where the executed notebooks and outputs are."""
    outputs = {"output_dir": cfg.output_dir, "results": str(cfg.results_path / "results.txt"),
               "grades": str(cfg.results_path / "grades.json"), "figures": str(Path(cfg.output_dir) / "figures"),
               "kernels' own stderr": str(out_dir / KERNEL_LOG)}
    atomic_write_json(out_dir / "index.json", {"config": str(out_dir / "config.yaml"), "outputs": outputs,
                                              "notebooks": [asdict(r) for r in runs]})
    lines = ["# tangpoem notebooks run", "", "| notebook | status | seconds | executed copy |", "|---|---|---|---|"]
    lines += [f"| {Path(r.notebook).name} | {r.status} | {r.seconds:.1f} | {r.output} |" for r in runs]
    lines += ["", *(f"- {name}: `{path}`" for name, path in outputs.items())]
    lines += [f"\n**failed**: {r.error}" for r in runs if r.error]
    atomic_write_text(out_dir / "index.md", "\n".join(lines) + "\n")


def run_all(config_path: str | Path | None, out_dir: str | Path, parameters: Mapping[str, Any],
            notebooks_dir: str | Path | None = None, log: Callable[[str], None] = print) -> list[NotebookRun]:
    """Execute every numbered notebook in order with papermill; raise NotebookFailed at the first failing cell.

    `parameters` are config keys (applied on top of the config file) or parameters that some
    notebook declares (e.g. `mount_drive`); anything else is refused. The effective config is written
    once, to OUT/config.yaml; each notebook gets it as `config_file` (its config knobs stay unset, so they
    keep the file's values) and the other parameters it declares.
    """
    from tangpoem.checkpoints import list_checkpoints

    notebooks = find_notebooks(notebooks_dir)
    log(f"notebooks: {len(notebooks)} from {notebooks[0].parent}")
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    known = set(FIELDS).union(*declared.values())
    for key in parameters:
        if key not in known:
            raise InputError(f"-p {key}: unknown parameter (not a config key, and no notebook declares it)")
    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"--out {display_path(out_dir)}: a file is in the way; choose a folder") from None
    cfg = effective_config(config_path, out, parameters)
    resume = bool(_plain(parameters.get("resume", False)))
    if list_checkpoints(cfg.output_dir) and not resume:
        raise InputError(f"{cfg.output_dir}: holds checkpoints of an earlier run; choose another --out, "
                         "or pass -p resume true")
    # The notebooks' knobs stay unset (None) and so keep this file's values: one rule, one place.
    config_file = atomic_write_text(out / "config.yaml", effective_yaml(cfg))
    values = {CONFIG_FILE_PARAMETER: str(config_file), **{k: _plain(v) for k, v in parameters.items() if k not in FIELDS}}

    runs = [NotebookRun(str(nb), str(out / nb.name), "not run") for nb in notebooks]
    write_index(out, cfg, runs)
    with unittest.mock.patch.dict(os.environ, {"TANGPOEM_HEADLESS": "1"}):  # the kernels inherit it: log lines, not live bars
        _execute(notebooks, runs, declared, values, out, cfg, log)
    return runs


def _execute(notebooks: list[Path], runs: list[NotebookRun], declared: dict[Path, set[str]], values: dict[str, Any],
             out: Path, cfg: Config, log: Callable[[str], None]) -> None:
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    kernel_log = out / KERNEL_LOG
    kernel_manager = _kernel_manager(kernel_log)
    for nb, run in zip(notebooks, runs):
        started = time.perf_counter()
        log(f"run  {nb.name} ...")
        with open(kernel_log, "a", encoding="utf-8") as f:
            f.write(f"== {nb.name} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        try:
            papermill.execute_notebook(str(nb), run.output, kernel_name=KERNEL_NAME, language="python", cwd=str(out),
                                       parameters={k: v for k, v in values.items() if k in declared[nb]},
                                       progress_bar=False, extra_arguments=KERNEL_ARGUMENTS,
                                       kernel_manager_class=kernel_manager)
        except (PapermillExecutionError, DeadKernelError) as e:
            run.status, run.seconds = "failed", time.perf_counter() - started
            run.error = (_failure(nb, Path(run.output), e) if isinstance(e, PapermillExecutionError) else
                         f"{nb.name}: the kernel died (out of memory?); its console output is in {kernel_log}, "
                         f"the cells it ran in {run.output}")
            write_index(out, cfg, runs)
            raise NotebookFailed(run.error, runs) from None
        run.status, run.seconds = "ok", time.perf_counter() - started
        log(f"ok   {nb.name} ({run.seconds:.1f} s) -> {run.output}")
        write_index(out, cfg, runs)


# ----------------------------------------------------------------------------- the command

def add_notebooks_arguments(parser: argparse.ArgumentParser) -> None:
    """`tangpoem notebooks run --config FILE --out DIR [-p KEY VALUE ...] [--notebooks DIR]`."""
    sub = parser.add_subparsers(dest="notebooks_command", required=True)
    run = sub.add_parser("run", help="execute every notebook in order with papermill (headless)")
    run.add_argument("--config", help="YAML config file, or the name of a shipped one (e.g. nano-cpu); "
                                      "default: the homework's values")
    run.add_argument("--out", required=True, metavar="DIR",
                     help="where the executed notebooks, index.md/json and (by default) the run's outputs go")
    run.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"), help="a config key or notebook parameter (repeatable), e.g. -p max_steps 4")
    run.add_argument("--notebooks", metavar="DIR", help="the notebooks to run (default: the checkout's notebooks/ "
                                                         "when run from a tangpoem checkout, else the installed ones)")


def run_notebooks(args: argparse.Namespace) -> int:
    """Exit status: 0 all ran, 1 a cell failed (named on stderr), 2 bad input (via InputError)."""
    parameters: dict[str, Any] = {}
    for key, value in args.parameters:
        if key in parameters:
            raise InputError(f"-p {key}: given twice")
        parameters[key] = value
    try:
        runs = run_all(args.config, args.out, parameters, args.notebooks)
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(r.seconds for r in runs)
    print(f"{len(runs)} notebooks ran in {total:.0f} s; index: {Path(args.out) / 'index.md'}")
    return 0
