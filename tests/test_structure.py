"""The house's plan, checked: the homework recipe in front, the speed machinery behind it.

- Only the set-up (train.py), generation (generate.py), export (export.py) and the fast wing itself import
  tangpoem.fast.
- The training loop is short and never asks which lever is on.
- The wheel's package list holds every package folder of the checkout.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tangpoem.config import keys_of

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tangpoem"


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_set_up_generation_and_export_import_the_fast_wing():
    importers = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if "fast" not in p.relative_to(PACKAGE).parts
                 and any(m == "tangpoem.fast" or m.startswith("tangpoem.fast.") for m in _imported_modules(p))}
    assert importers == {"tangpoem/train.py", "tangpoem/generate.py",
                         "tangpoem/export.py"}, importers  # export: the merged model is fast.dense's dequantize-and-merge


def test_the_fast_wing_lists_the_private_apis_it_leans_on():
    import tangpoem.fast

    doc = tangpoem.fast.__doc__
    for name in ("hf_quantizer", "_attn_implementation", "sdpa_attention_forward", "StaticLayer", "lora_variant", "dequantize_4bit"):
        assert name in doc, name
    for module in sorted((PACKAGE / "fast").glob("*.py")):
        if module.stem != "__init__":
            assert f"{module.stem}.py" in doc, f"tangpoem/fast/__init__.py says nothing of {module.name}"


def _function(path: Path, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(n, ast.FunctionDef) and n.name == name)


def test_the_training_loop_is_short_and_never_branches_on_a_lever():
    loop = _function(PACKAGE / "train.py", "train_loop")
    assert loop.end_lineno - loop.lineno + 1 <= 60
    attributes = {n.attr for n in ast.walk(loop) if isinstance(n, ast.Attribute)}
    assert not attributes & set(keys_of("levers")), attributes & set(keys_of("levers"))


def test_no_function_of_the_package_is_over_80_lines():
    long = [f"{p.relative_to(REPO)}:{n.lineno} {n.name}" for p in PACKAGE.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_the_wheel_lists_every_package_folder():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= set(listed), folders - set(listed)
