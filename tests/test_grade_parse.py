import json

import pytest
from grade_helpers import FIXTURES, GT, TEST

from tangpoem.errors import InputError
from tangpoem.grade import grade_file, load_test_poems
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
    with pytest.raises(InputError, match="invalid JSON"):
        load_test_poems(GT, test)
