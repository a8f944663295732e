"""Shared paths and helpers for the grade tests."""

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "grade"
GT = FIXTURES / "gt.txt"
TEST = FIXTURES / "test.json"
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "GenAI-Hw5"
