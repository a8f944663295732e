import csv
import io
import json
import subprocess
import sys

import pytest
from grade_helpers import FIXTURES, GT, REAL_DATA, TEST

from tangpoem.grade import grade_paths, grade_predictions
from tangpoem.grade.cli import add_grade_arguments, main, run_grade
from tangpoem.grade.grading import MEAN_FIELDS
from tangpoem.grade.report import render_html, report_json

ROOT = FIXTURES.parents[2]


def grade(*argv):
    return main([*map(str, argv), "--gt", str(GT), "--test", str(TEST)])


def test_all_graded_exits_0_and_prints_tables(capsys):
    assert grade(FIXTURES / "perfect.txt", FIXTURES / "results.json") == 0
    out = capsys.readouterr().out
    assert "== summary" in out and "2 files: 2 graded, 0 could not be graded" in out


def test_an_unreadable_file_gets_an_error_row_and_exit_1(capsys):
    assert grade(FIXTURES / "perfect.txt", FIXTURES / "binary.txt") == 1
    captured = capsys.readouterr()
    assert "binary file (contains NUL bytes)" in captured.out
    assert captured.err.strip().splitlines() == [
        f"error: {FIXTURES / 'binary.txt'}: binary file (contains NUL bytes), not UTF-8 text"]


def test_a_directory_is_searched_for_results_files(tmp_path, capsys):
    for student in ("a", "b"):
        (tmp_path / student).mkdir()
        (tmp_path / student / "results.txt").write_bytes((FIXTURES / "perfect.txt").read_bytes())
    (tmp_path / "b" / "notes.txt").write_text("not a submission")
    assert main([str(tmp_path), "--gt", str(GT), "--test", str(TEST), "--json"]) == 0
    paths = [f["path"] for f in json.loads(capsys.readouterr().out)["files"]]
    assert paths == [str(tmp_path / "a" / "results.txt"), str(tmp_path / "b" / "results.txt")]


@pytest.mark.parametrize("argv_tail", [
    ["--gt", "missing_gt.txt", "--test", str(TEST)],
    ["--gt", str(GT), "--test", str(FIXTURES / "wrong_shape.json")],
])
def test_broken_gt_or_test_file_exits_2_with_one_line(capsys, argv_tail):
    assert main([str(FIXTURES / "perfect.txt"), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_missing_results_path_exits_2(capsys):
    assert grade(FIXTURES / "nope.txt") == 2
    assert "nope.txt: no such file or directory" in capsys.readouterr().err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["--gt", str(GT)])
    assert exc.value.code == 2


def test_json_schema(capsys):
    assert grade(FIXTURES / "halfwidth_extra.txt", FIXTURES / "empty.txt", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 2
    assert set(doc) == {"schema_version", "gt", "test", "files", "summary"}
    graded, error = doc["files"]
    assert set(graded) == {"path", "status", "error", "repairs", "missing", "mean", "poems", "judge"}
    assert graded["status"] == "graded" and graded["missing"] == 1 and set(graded["mean"]) == set(MEAN_FIELDS)
    poem = graded["poems"][0]
    assert set(poem) == {"index", "status", "source", "input", "gt_verses", "prediction", "verses", "scores",
                         "raw_scores", "form", "prosody", "repairs", "judge"}
    assert poem["judge"] is None and graded["judge"] is None and doc["summary"]["judge"] is None  # no judge asked
    assert poem["scores"]["verse_exact"] == 1.0 and poem["form"]["verse_count"] == 4
    assert error == {"path": str(FIXTURES / "empty.txt"), "status": "error", "error": error["error"],
                     "repairs": [], "missing": None, "mean": None, "poems": [], "judge": None}
    assert doc["summary"]["files"] == 2 and doc["summary"]["errors"] == 1 and doc["summary"]["graded"] == 1


def test_csv_has_one_row_per_file(tmp_path, capsys):
    out = tmp_path / "out" / "class.csv"
    assert grade(FIXTURES / "perfect.txt", FIXTURES / "binary.txt", "--csv", out) == 1
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["status"] for r in rows] == ["graded", "error"]
    assert float(rows[0]["verse_exact"]) == 1.0 and rows[1]["verse_exact"] == ""
    assert "binary file" in rows[1]["error"]


def test_html_escapes_submitted_text(tmp_path):
    out = tmp_path / "report.html"
    assert grade(FIXTURES / "xss.txt", "--html", out) == 0
    html = out.read_text(encoding="utf-8")
    assert "&lt;script&gt;document.title=&#34;HACKED&#34;&lt;/script&gt;" in html
    assert '<script>document.title="HACKED"' not in html and "<img src=x" not in html
    assert html.count("<script>") == 1  # only our own sorting script
    assert "http://" not in html and "https://" not in html  # self-contained


def test_add_grade_arguments_and_run_grade_work_as_a_subcommand(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="tangpoem")
    sub = parser.add_subparsers(dest="command")
    add_grade_arguments(sub.add_parser("grade"))
    args = parser.parse_args(["grade", str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--json"])
    assert run_grade(args) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["graded"] == 1


def test_module_runs_stand_alone():
    proc = subprocess.run([sys.executable, "-m", "tangpoem.grade.cli", str(FIXTURES / "perfect.txt"), "--gt", str(GT),
                           "--test", str(TEST)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no deprecation warnings leaking from pkg_resources


def test_grade_predictions_in_memory():
    gt_lines = GT.read_text(encoding="utf-8").splitlines()
    rows = json.loads(TEST.read_text(encoding="utf-8"))
    result = grade_predictions(["偕伴登山去，觀雪且賞桔。", "", "[INST]君問歸期未有期，巴山夜雨漲秋池。[/INST]何當共剪西窗燭，卻話巴山夜雨時。"],
                               gt_lines, rows)
    assert [p.normalized.verse_exact for p in result.poems] == [1.0, 0.0, 1.0]
    assert "empty prediction; scored 0" in result.poems[1].notes


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="course data not at ../shared/data/GenAI-Hw5")
def test_real_gt_graded_against_itself_scores_one():
    gt_lines = (REAL_DATA / "Tang_testing_gt.txt").read_text(encoding="utf-8").splitlines()
    rows = json.loads((REAL_DATA / "Tang_testing_data.json").read_text(encoding="utf-8"))
    predictions = ["，".join(line.split("\t")) + "。" for line in gt_lines]
    result = grade_predictions(predictions, gt_lines, rows)
    for name in MEAN_FIELDS:
        if name.endswith("edit_distance"):
            assert result.mean[name] == 0.0
        elif name not in ("pingze_score", "rhyme_score"):
            assert result.mean[name] == pytest.approx(1.0), name
    empty = grade_predictions([""] * len(rows), gt_lines, rows)
    assert all(empty.mean[name] == 0.0 for name in MEAN_FIELDS if not name.endswith("edit_distance"))


def test_report_json_and_html_of_grade_paths():
    report = grade_paths([FIXTURES / "perfect.txt"], GT, TEST)
    assert report_json(report)["summary"]["mean"]["char_f1"] == 1.0
    assert "<table class=\"sortable\"" in render_html(report)


def test_summary_rows_line_up_under_the_header(capsys):
    assert grade(FIXTURES / "perfect.txt", FIXTURES / "results.json") == 0
    summary = capsys.readouterr().out.split("== summary\n")[1].splitlines()
    header, rows = summary[0], [line for line in summary[1:-1] if " graded " in line or line.startswith("class mean")]
    assert any(line.startswith("class mean") for line in rows)
    for line in rows:  # every score column ends where its header ends
        assert len(line) == len(header), (line, header)


def test_max_file_size_raises_the_limit_and_refuses_nonsense(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_bytes((FIXTURES / "perfect.txt").read_bytes() + b"\n" * 300)
    assert grade(path, "--max-file-size", "200") == 1
    assert "bytes, over the 200-byte limit for one submission" in capsys.readouterr().err
    assert grade(path, "--max-file-size", "10000") == 0
    for bad in ("0", "-5", "1e6"):
        with pytest.raises(SystemExit) as exc:
            grade(path, "--max-file-size", bad)
        assert exc.value.code == 2
    assert "expected a positive number of bytes, got '1e6'" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_does_not_stop_the_others(tmp_path, capsys):
    csv_path, html_dir = tmp_path / "class.csv", tmp_path / "taken"
    html_dir.mkdir()  # --html names a folder: it cannot be replaced by the report
    assert grade(FIXTURES / "perfect.txt", "--html", html_dir, "--csv", csv_path) == 2
    captured = capsys.readouterr()
    assert "== summary" in captured.out and csv_path.is_file()
    assert captured.err.splitlines() == [f"error: {html_dir}: cannot write the report (Is a directory)"]


def test_the_html_shows_a_bounded_part_of_a_huge_answer(tmp_path):
    from tangpoem.grade.limits import MAX_SUBMISSION_BYTES

    rows = json.loads(TEST.read_text(encoding="utf-8"))
    pairs = MAX_SUBMISSION_BYTES // len(rows) // 6 - 20  # "山，" is 6 bytes of UTF-8; ~20 pairs for the rest
    path = tmp_path / "results.txt"
    path.write_text("".join(f"{n}. {r['input']}" + "山，" * pairs + "\n" for n, r in enumerate(rows, 1)),
                    encoding="utf-8")
    assert MAX_SUBMISSION_BYTES * 0.9 < path.stat().st_size <= MAX_SUBMISSION_BYTES
    out = tmp_path / "report.html"
    assert grade(path, "--html", out) == 0
    html = out.read_text(encoding="utf-8")
    assert len(html.encode()) < 100_000  # ~30 KB; all of it would be tens of MB
    assert "more verses not shown" in html and "more characters not shown" in html
