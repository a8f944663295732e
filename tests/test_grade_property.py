"""Whatever a student's file holds, grading returns a graded row or an error row; it never crashes."""

import json
import tempfile
from pathlib import Path

from grade_helpers import GT, TEST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tangpoem.grade import grade_file, load_test_poems
from tangpoem.grade.report import format_text, render_html, report_json
from tangpoem.grade.grading import ClassReport

TESTS = load_test_poems(GT, TEST)
POEM_BITS = st.sampled_from(["雪霽銀妝素，桔高映瓊枝。", "1. ", "２、", "(3)", "[INST]", "</s>", "Assistant:", "\r\n",
                             "\n", "\ufeff", "，", "偕伴登山去", "㐀", "<script>", "\t", " ", "劒", "<<SYS>>",
                             "<</SYS>>", "<|im_end|>", "1" * 12, "㍻"])
TEXT = st.lists(st.one_of(st.text(max_size=20), POEM_BITS), max_size=30).map("".join)


def check(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        result = grade_file(path, TESTS)
        assert result.status in ("graded", "error")
        if result.status == "error":
            assert result.error and "\n" not in result.error
        else:
            assert len(result.poems) == len(TESTS)
            for value in result.mean.values():
                assert value is None or 0.0 <= value <= 1.0
        report = ClassReport(str(GT), str(TEST), [result])
        # Every report can be written as UTF-8 (a lone surrogate would make that raise).
        json.dumps(report_json(report), ensure_ascii=False).encode("utf-8")
        format_text(report).encode("utf-8")
        render_html(report).encode("utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_any_text_in_results_txt(text):
    check("results.txt", text.encode("utf-8", "surrogatepass"))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_in_results_txt(data):
    check("results.txt", data)


# Strings with lone surrogates too: json.dumps writes them as \\ud800 escapes, which json.loads reads back.
STRINGS = st.text(st.characters(categories=["L", "N", "P", "Cs"]), max_size=10)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | STRINGS | POEM_BITS,
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.sampled_from(["input", "predict", "output", "instruction", "x"]),
                                             children, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(JSON_VALUES)
def test_any_json_in_results_json(value):
    check("results.json", json.dumps(value).encode("utf-8"))
