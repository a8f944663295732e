import json
import os
import time

import pytest
from grade_helpers import FIXTURES, GT, TEST

from tangpoem.errors import InputError
from tangpoem.grade import grade_file, load_test_poems
from tangpoem.grade.limits import MAX_ANSWER_CHARS, MAX_SUBMISSION_BYTES
from tangpoem.grade.parse import parse_submission

TESTS = load_test_poems(GT, TEST)
CONTINUATIONS = {1: "偕伴登山去，觀雪且賞桔。",
                 2: "地猶鄹氏邑，宅即魯王宮。嘆鳳嗟身否，傷麟怨道窮。今看兩楹奠，當與夢時同。",
                 3: "何當共剪西窗燭，卻話巴山夜雨時。"}


def parse(name):
    return parse_submission(FIXTURES / name, TESTS)


def notes_of(submission):
    return submission.notes + [n for p in submission.poems.values() for n in p.notes]


def test_course_format_needs_no_repairs():
    submission = parse("perfect.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    assert notes_of(submission) == []


def test_bom_crlf_and_blank_lines_are_repaired_and_noted():
    submission = parse("bom_crlf_blank.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    assert submission.notes == ["removed UTF-8 byte-order mark (BOM)", "converted CRLF/CR line endings",
                                "skipped 2 blank lines"]


def test_odd_numbering_is_read_and_noted():
    submission = parse("numbering.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    notes = notes_of(submission)
    assert any("'(1)'" in n and "read as 1" in n for n in notes)
    assert any("'２、'" in n and "read as 2" in n for n in notes)
    assert any("'3)'" in n for n in notes)


def test_missing_numbers_and_missing_couplets_fall_back_to_position():
    submission = parse("no_numbers_no_couplet.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    for poem in submission.poems.values():
        assert "no line number" in poem.notes
        assert "input couplet missing at the start of the answer" in poem.notes
        assert f"matched to poem {poem.index} by its position in the file" in poem.notes


def test_out_of_order_lines_are_matched_by_their_couplet():
    submission = parse("out_of_order.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    assert submission.poems[3].source == "line 1"
    assert "lines are not in test order; matched each one to its poem" in submission.notes


def test_couplet_beats_a_wrong_number(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("2. 雪霽銀妝素，桔高映瓊枝。偕伴登山去，觀雪且賞桔。\n", encoding="utf-8")
    submission = parse_submission(path, TESTS)
    assert list(submission.poems) == [1]
    assert "numbered 2 but its input couplet is test poem 1; graded as 1" in submission.poems[1].notes


def test_chat_fragments_instruction_and_repeated_couplet_are_removed():
    submission = parse("fragments.txt")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    assert any("[INST]" in n and "</s>" in n for n in submission.poems[1].notes)
    assert "removed the instruction text" in submission.poems[1].notes
    assert any("Assistant:" in n for n in submission.poems[2].notes)
    assert "input couplet repeated 2 times; removed the repeats" in submission.poems[3].notes


def test_half_width_punctuation_and_extra_verses():
    result = grade_file(FIXTURES / "halfwidth_extra.txt", TESTS)
    first, second, third = result.poems
    assert first.verses == ["偕伴登山去", "觀雪且賞桔", "風吹雪滿枝", "日暮人未歸"]
    assert first.normalized.verse_exact == 1.0  # content on the GT's 2 verses
    assert first.form.verse_count == 4 and first.form.verse_count_ok == 0.0
    assert any("2 verses past the GT's 2" in n for n in first.notes)
    assert second.normalized.verse_exact == 1.0  # space-separated verses
    assert third.status == "missing" and third.normalized.char_f1 == 0
    assert "poem 3 missing from the file; scored 0" in third.notes


def test_results_json_records_are_matched_by_input():
    submission = parse("results.json")
    assert {i: p.prediction for i, p in submission.poems.items()} == CONTINUATIONS
    assert submission.poems[3].source == "record 1"


def test_results_json_record_without_predict_is_skipped_with_a_note(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"input": "雪霽銀妝素，桔高映瓊枝。", "predict": "偕伴登山去，觀雪且賞桔。"},
                                {"input": "夫子何爲者？栖栖一代中。"}], ensure_ascii=False), encoding="utf-8")
    result = grade_file(path, TESTS)
    assert result.status == "graded"
    assert "record 2: no 'predict' string; skipped" in result.notes
    assert result.poems[1].status == "missing"


@pytest.mark.parametrize("name, message", [
    ("wrong_shape.json", "wrong_shape.json: expected a JSON list of {instruction, input, predict} objects, got dict"),
    ("latin1.txt", "latin1.txt:1: not UTF-8 text (byte 0xec at offset 5); save the file as UTF-8"),
    ("binary.txt", "binary.txt: binary file (contains NUL bytes), not UTF-8 text"),
    ("empty.txt", "empty.txt: file is empty"),
])
def test_unreadable_files_become_one_line_error_rows(name, message):
    result = grade_file(FIXTURES / name, TESTS)
    assert result.status == "error" and result.poems == []
    assert result.error.endswith(message) and "\n" not in result.error


def test_utf16_files_are_decoded(tmp_path):
    path = tmp_path / "results.txt"
    path.write_bytes((FIXTURES / "perfect.txt").read_text(encoding="utf-8").encode("utf-16"))
    result = grade_file(path, TESTS)
    assert result.status == "graded" and result.mean["verse_exact"] == 1.0
    assert "file was UTF-16; decoded it" in result.notes


def test_inputs_are_never_modified():
    before = {p: p.read_bytes() for p in FIXTURES.iterdir()}
    for path in FIXTURES.iterdir():
        if path.name not in ("gt.txt", "test.json"):
            grade_file(path, TESTS)
    assert before == {p: p.read_bytes() for p in FIXTURES.iterdir()}


@pytest.mark.parametrize("gt_text, message", [
    ("偕伴登山去\t觀雪且賞桔\n", "has 1 non-empty lines but"),
    ("a\t\tb\nc\td\ne\tf\n", ":1: empty verse"),
])
def test_bad_gt_raises_input_error(tmp_path, gt_text, message):
    gt = tmp_path / "gt.txt"
    gt.write_text(gt_text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_test_poems(gt, TEST)


def test_bad_test_file_raises_input_error(tmp_path):
    test = tmp_path / "test.json"
    test.write_text('[{"input": "a"}, {"instruction": "x"}, {"input": "b"}]', encoding="utf-8")
    with pytest.raises(InputError, match="record 2: expected an object with a non-empty string 'input'"):
        load_test_poems(GT, test)
    test.write_text("[", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        load_test_poems(GT, test)


# ---------------------------------------------------------------- hostile submissions: bounded work

COUPLET, ANSWER = "雪霽銀妝素，桔高映瓊枝。", "偕伴登山去，觀雪且賞桔。"
INSTRUCTION = TESTS[0].instruction
# Each repair is linear: a file of a few hundred KB grades in well under a second here; quadratic
# repairs took minutes on such files (131 s for the 146 KB repeated couplet).
SECONDS = 5


def timed_grade(path, **kwargs):
    start = time.perf_counter()
    result = grade_file(path, TESTS, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"{path.name} took {elapsed:.1f} s"
    return result


@pytest.mark.parametrize("line, repair", [
    ("1. " + COUPLET * 4_000 + ANSWER, "input couplet repeated 4000 times; removed the repeats"),
    ("1. " + "<<SYS>>" * 60_000 + COUPLET + ANSWER, "removed chat-template fragments '<<SYS>>'"),
    ("1. " + "<<SYS>>你是詩人<</SYS>>" * 20_000 + COUPLET + ANSWER, "removed chat-template fragments '<<SYS>>你是詩人<</SYS>>'"),
    ("1. " + "<</SYS>>" + "<<SYS>>" * 60_000 + COUPLET + ANSWER, "removed chat-template fragments '<</SYS>>', '<<SYS>>'"),
    ("1. " + "[INST]</s>" * 40_000 + COUPLET + ANSWER, "removed chat-template fragments '</s>', '[INST]'"),
    ("1. " + "User:" * 80_000 + COUPLET + ANSWER, "removed chat-template fragments 'User:'"),
    ("1. " + "Assistant" + " " * 400_000 + "：" + COUPLET + ANSWER, "removed chat-template fragments 'Assistant"),
    ("1. " + INSTRUCTION * 5_000 + COUPLET + ANSWER, "removed the instruction text"),
    ("(" + " " * 400_000 + "1)" + COUPLET + ANSWER, "numbering '(" + " " * 19 + "...' is not the course's 'N. '; read as 1"),
    ("1" * 5_000 + ". " + COUPLET + ANSWER, "leading number of 5000 digits ('111111111111...') is not a poem number; ignored it"),
])
def test_hostile_lines_are_repaired_in_linear_time(tmp_path, line, repair):
    path = tmp_path / "results.txt"
    path.write_text(line + "\n", encoding="utf-8")
    result = timed_grade(path)
    first = result.poems[0]
    assert first.prediction == ANSWER and first.normalized.verse_exact == 1.0
    assert any(note.startswith(repair) for note in first.notes), first.notes
    assert all(len(note) < 300 for note in first.notes)


@pytest.mark.parametrize("shape", ["<|" + "a" * 400_000, "山" * 300_000, "山，" * 150_000, "User " * 80_000])
def test_a_huge_answer_is_graded_on_its_first_characters(tmp_path, shape):
    path = tmp_path / "results.txt"
    path.write_text(f"1. {COUPLET}{shape}\n2. x\n", encoding="utf-8")
    first = timed_grade(path).poems[0]
    assert len(first.prediction) == MAX_ANSWER_CHARS
    assert f"answer is {len(shape.strip()):,} characters; graded its first {MAX_ANSWER_CHARS:,}" in first.notes


def test_many_lines_become_one_note_each_kind(tmp_path):
    path = tmp_path / "results.txt"
    lines = [f"{n}. {COUPLET}{ANSWER}" for n in range(1, 3)] + [f"{n}. 山" for n in range(4, 50_000)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # answers on odd lines, blank lines between
    result = timed_grade(path)
    assert result.notes == [
        f"skipped {len(lines) - 1} blank lines",
        "line 3 (poem 1): second answer for a poem (by its input couplet); kept the first",
        "line 5 (number 4), line 7 (number 5), line 9 (number 6), line 11 (number 7), line 13 (number 8) "
        f"and {len(lines) - 2 - 5} more: ignored, could not be matched to a test poem",
    ]


def test_a_results_json_with_a_huge_repeated_couplet(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"input": COUPLET, "predict": "<<SYS>>" * 30_000 + COUPLET * 3_000 + ANSWER}],
                               ensure_ascii=False), encoding="utf-8")
    first = timed_grade(path).poems[0]
    assert first.prediction == ANSWER and "input couplet repeated 3000 times; removed the repeats" in first.notes


def test_a_file_over_the_size_limit_is_an_error_row_unless_the_limit_is_raised(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text(f"1. {COUPLET}{ANSWER}\n" + "\n" * MAX_SUBMISSION_BYTES, encoding="utf-8")
    size = path.stat().st_size
    result = grade_file(path, TESTS)
    assert result.status == "error"
    assert result.error == (f"{path}: {size:,} bytes, over the {MAX_SUBMISSION_BYTES:,}-byte limit for one "
                            "submission; if it is genuine, raise the limit with --max-file-size")
    assert timed_grade(path, max_bytes=2 * MAX_SUBMISSION_BYTES).poems[0].prediction == ANSWER


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "results.json: JSON nested too deeply to read"),
    ('[{"input": "x", "predict": ' + "9" * 5_000 + "}]", "results.json: not valid JSON (Exceeds the limit"),
])
def test_json_that_python_cannot_read_is_an_error_row(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text, encoding="utf-8")
    result = timed_grade(path)
    assert result.status == "error" and result.error.startswith(f"{tmp_path}/{message}")


def test_lone_surrogates_in_results_json_are_replaced_and_noted(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('[{"input": "%s", "predict": "%s\\ud800"}]' % (COUPLET, ANSWER), encoding="utf-8")
    first = grade_file(path, TESTS).poems[0]
    assert first.prediction == ANSWER + "\ufffd"
    assert "'predict' held lone surrogate escapes (half characters); replaced them with U+FFFD" in first.notes


def test_an_undecodable_file_name_is_shown_escaped(tmp_path):
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")
    os.mkdir(folder)
    path = os.path.join(folder, "results.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"1. {COUPLET}{ANSWER}\n")
    result = grade_file(path, TESTS)
    assert result.status == "graded" and result.path == f"{tmp_path}/caf\\xe9/results.txt"


def test_any_exception_while_grading_a_file_becomes_its_error_row(tmp_path, monkeypatch):
    """Fault injection: a scoring step that raises (a case the grader does not foresee) costs one row."""
    import tangpoem.grade.grading as grading

    def broken(*args):
        raise ZeroDivisionError("division by zero\nin a scorer")

    monkeypatch.setattr(grading, "prosody_scores", broken)
    result = grade_file(FIXTURES / "perfect.txt", TESTS)
    assert result.status == "error"
    assert result.error == (f"{FIXTURES / 'perfect.txt'}: could not be graded (ZeroDivisionError: division by zero in "
                            "a scorer); this is a bug in the grader, please report it with this file")


@pytest.mark.parametrize("which, content, message", [
    ("gt", b"\xff\xfe\x00\xd8", "gt.txt: has a UTF-16 byte-order mark but is not valid UTF-16"),
    ("gt", "偕伴\n".encode("big5"), "gt.txt:1: not UTF-8 text"),
    ("test", b"[" * 100_000, "test.json: JSON nested too deeply to read"),
    ("test", b'[{"input": "a"}, {"input": "\\udc80"}, {"input": "b"}]', "test.json: record 2: field 'input' holds a lone surrogate (\\udc80"),
    ("test", None, "test.json: is a directory, expected a file"),
])
def test_a_broken_gt_or_test_file_is_one_input_error(tmp_path, which, content, message):
    paths = {"gt": tmp_path / "gt.txt", "test": tmp_path / "test.json"}
    paths["gt"].write_bytes(GT.read_bytes())
    paths["test"].write_bytes(TEST.read_bytes())
    paths[which].unlink()
    if content is None:
        paths[which].mkdir()
    else:
        paths[which].write_bytes(content)
    with pytest.raises(InputError) as e:
        load_test_poems(paths["gt"], paths["test"])
    assert str(e.value).startswith(f"{tmp_path}/{message}") and "\n" not in str(e.value)


def test_an_unreadable_gt_file_is_one_input_error(tmp_path):
    loop = tmp_path / "gt.txt"
    loop.symlink_to(loop)  # open() fails (too many levels of symbolic links), even for root
    with pytest.raises(InputError, match=r"gt.txt: cannot read \(Too many levels of symbolic links\)"):
        load_test_poems(loop, TEST)
