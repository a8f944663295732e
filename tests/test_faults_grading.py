"""Fault injection, end to end through the commands a grader and an instructor run: hostile student
files, broken ground-truth/test/course files and umasks. Each case ends in one line naming the file and
what to do; `tangpoem grade` exits 1 when some files failed (its tables, CSV and HTML still cover every
file) and 2 for bad input it cannot grade against. Each case takes a few seconds at most."""

import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grade_helpers import FIXTURES, GT, TEST

from tangpoem.cli import main as tangpoem_main
from tangpoem.grade.cli import main as grade_main
from tangpoem.grade.limits import MAX_SUBMISSION_BYTES
from tangpoem.io import display_path

ROOT = Path(__file__).resolve().parents[1]
COUPLET, ANSWER = "雪霽銀妝素，桔高映瓊枝。", "偕伴登山去，觀雪且賞桔。"


def hostile_class(folder: Path) -> dict[str, str]:
    """A class folder with good and hostile submissions; returns {student: what its row must say}."""
    perfect = (FIXTURES / "perfect.txt").read_bytes()
    submissions = {
        "good": ("results.txt", perfect, "graded"),
        "repeated_couplet": ("results.txt", f"1. {COUPLET * 4_000}{ANSWER}\n".encode(), "graded"),
        "sys_runs": ("results.txt", f"1. {'<<SYS>>' * 60_000}{COUPLET}{ANSWER}\n".encode(), "graded"),
        "long_number": ("results.txt", f"{'7' * 5_000}. {COUPLET}{ANSWER}\n".encode(), "graded"),
        "surrogate": ("results.json", json.dumps([{"input": COUPLET, "predict": ANSWER + "\ud800"}]).encode(),
                      "graded"),
        "deep_json": ("results.json", b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply to read"),
        "huge": ("results.txt", perfect + b"\n" * (10 * MAX_SUBMISSION_BYTES),
                 f"over the {MAX_SUBMISSION_BYTES:,}-byte limit for one submission"),
        "binary": ("results.txt", b"\x00\x01\x02" * 100, "binary file (contains NUL bytes)"),
        "latin1": ("results.txt", "1. café\n".encode("latin-1"), "not UTF-8 text"),
        "new\nline": ("results.txt", b"\x00", "binary file"),  # a name that would break the one-line rows
    }
    expected = {}
    for student, (name, data, outcome) in submissions.items():
        (folder / student).mkdir(parents=True)
        (folder / student / name).write_bytes(data)
        expected[display_path(student)] = outcome
    loop = folder / "loop" / "results.txt"
    loop.parent.mkdir()
    loop.symlink_to("results.txt")  # a link to itself: nothing to read
    expected["loop"] = "not a regular file (a broken symbolic link, a pipe or a device)"
    fifo = folder / "fifo" / "results.txt"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    expected["fifo"] = expected["loop"]
    return expected


def test_a_hostile_class_is_graded_whole_with_every_report(tmp_path):
    """The issue's cases: a quadratic repair stalled a class for minutes; a RecursionError or a 5,000-digit
    number ended the run with exit 1, an empty stdout and no --html/--csv; a 10 MB file gave a 73 MB page."""
    expected = hostile_class(tmp_path / "class")
    html, table = tmp_path / "out" / "report.html", tmp_path / "out" / "class.csv"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tangpoem.grade.cli", str(tmp_path / "class"), "--gt", str(GT),
                           "--test", str(TEST), "--html", str(html), "--csv", str(table)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.perf_counter() - start
    assert elapsed < 60, elapsed  # ~5 s here, most of it starting Python and the grading libraries
    assert proc.returncode == 1, proc.stderr
    errors = {s for s, outcome in expected.items() if outcome != "graded"}
    assert f"{len(expected)} files: {len(expected) - len(errors)} graded, {len(errors)} could not be graded" in proc.stdout
    assert len(proc.stderr.splitlines()) == len(errors)  # one line per failed file, nothing else
    for student in errors:
        line = next(line for line in proc.stderr.splitlines() if f"/{student}/" in line)
        assert line.startswith(f"error: {tmp_path / 'class' / student}/results.") and expected[student] in line
    rows = {Path(r["path"]).parent.name: r for r in csv.DictReader(io.StringIO(table.read_text(encoding="utf-8")))}
    assert set(rows) == set(expected)
    for student, outcome in expected.items():
        assert rows[student]["status"] == ("graded" if outcome == "graded" else "error")
        if outcome == "graded":
            assert float(rows[student]["verse_exact"]) > 0  # the answer survived its repairs
    page = html.read_text(encoding="utf-8")
    assert all(f"/{student}/" in page for student in expected)
    assert len(page.encode()) < 60_000 * len(expected)  # bounded per file, whatever the file held


def test_an_unforeseen_exception_costs_one_row_not_the_class(tmp_path, monkeypatch, capsys):
    """Fault injection: a scorer raises for one answer; that file gets an error row naming the exception."""
    import tangpoem.grade.grading as grading

    real = grading.content_scores

    def fails_on_marker(pred_verses, gt_verses):
        if any("故障" in verse for verse in pred_verses):
            raise RecursionError("maximum recursion depth exceeded")
        return real(pred_verses, gt_verses)

    monkeypatch.setattr(grading, "content_scores", fails_on_marker)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.txt").write_bytes((FIXTURES / "perfect.txt").read_bytes())
    (tmp_path / "b" / "results.txt").write_text(f"1. {COUPLET}故障，故障。\n", encoding="utf-8")
    out = tmp_path / "report.html"
    assert grade_main([str(tmp_path), "--gt", str(GT), "--test", str(TEST), "--html", str(out)]) == 1
    captured = capsys.readouterr()
    assert "2 files: 1 graded, 1 could not be graded" in captured.out
    assert captured.err.splitlines() == [
        f"error: {tmp_path / 'b' / 'results.txt'}: could not be graded (RecursionError: maximum recursion depth "
        "exceeded); this is a bug in the grader, please report it with this file"]
    assert "maximum recursion depth exceeded" in out.read_text(encoding="utf-8")


def _broken(kind: str, path: Path) -> None:
    path.unlink()
    if kind == "not UTF-8":
        path.write_bytes("偕伴登山去\t觀雪且賞桔\n".encode("big5"))
    elif kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        path.symlink_to(path.name)  # open() fails with ELOOP, even for root
    elif kind == "nested":
        path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    elif kind == "binary":
        path.write_bytes(b"\x00" * 10)


@pytest.mark.parametrize("which, kind, message", [
    ("gt", "not UTF-8", "gt.txt:1: not UTF-8 text (byte 0xb0 at offset 0); save the file as UTF-8"),
    ("gt", "directory", "gt.txt: is a directory, expected a file"),
    ("gt", "unreadable", "gt.txt: cannot read (Too many levels of symbolic links)"),
    ("gt", "binary", "gt.txt: binary file (contains NUL bytes), not UTF-8 text"),
    ("test", "nested", "test.json: JSON nested too deeply to read"),
    ("test", "directory", "test.json: is a directory, expected a file"),
    ("test", "not UTF-8", "test.json:1: not UTF-8 text"),
])
def test_a_broken_gt_or_test_file_is_exit_2_with_one_line_and_no_report(tmp_path, capsys, which, kind, message):
    gt, test = tmp_path / "gt.txt", tmp_path / "test.json"
    shutil.copy(GT, gt)
    shutil.copy(TEST, test)
    _broken(kind, gt if which == "gt" else test)
    out = tmp_path / "report.html"
    assert grade_main([str(FIXTURES / "perfect.txt"), "--gt", str(gt), "--test", str(test), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/{message}") and err.count("\n") == 1
    assert not out.exists()


def _run_without_root_override(argv: list[str]) -> subprocess.CompletedProcess:
    """Run `python -m tangpoem.cli ARGV` so that a mode-000 file cannot be read: as an ordinary user, or as
    root without the capabilities that let root read any file (setpriv, from util-linux)."""
    command = [sys.executable, "-m", "tangpoem.cli", *argv]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root a mode-000 file is readable, and setpriv (util-linux) is not installed to drop that")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_permission_denied_on_a_submission_and_on_the_gt(tmp_path):
    (tmp_path / "s").mkdir()
    shutil.copy(FIXTURES / "perfect.txt", tmp_path / "s" / "results.txt")
    shutil.copy(GT, tmp_path / "gt.txt")
    (tmp_path / "s" / "results.txt").chmod(0)
    proc = _run_without_root_override(["grade", str(tmp_path / "s"), "--gt", str(tmp_path / "gt.txt"),
                                       "--test", str(TEST), "--csv", str(tmp_path / "class.csv")])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"error: {tmp_path / 's' / 'results.txt'}: cannot read (Permission denied)\n"
    assert "cannot read (Permission denied)" in (tmp_path / "class.csv").read_text(encoding="utf-8")
    (tmp_path / "gt.txt").chmod(0)
    proc = _run_without_root_override(["grade", str(FIXTURES / "perfect.txt"), "--gt", str(tmp_path / "gt.txt"),
                                       "--test", str(TEST)])
    assert (proc.returncode, proc.stderr) == (2, f"error: {tmp_path / 'gt.txt'}: cannot read (Permission denied)\n")


@pytest.mark.parametrize("fault, message", [
    ("surrogate", "Tang_training_data.json: record 7: field 'output' holds a lone surrogate"),
    ("nested", "Tang_testing_data.json: JSON nested too deeply to read"),
    ("directory", "Tang_testing_gt.txt: is a directory, expected the file itself"),
    ("not UTF-8", "Tang_testing_gt.txt:1: not UTF-8 text"),
    ("unreadable", "Tang_training_data.json: cannot read (Permission denied); check that the file is readable"),
])
def test_data_check_names_what_train_would_choke_on(course_dir, tmp_path, fault, message):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("Tang_training_data.json", "Tang_testing_data.json", "Tang_testing_gt.txt"):
        shutil.copy(course_dir / name, d / name)
    if fault == "surrogate":
        rows = json.loads((d / "Tang_training_data.json").read_text(encoding="utf-8"))
        rows[7]["output"] += "\udfff"
        (d / "Tang_training_data.json").write_text(json.dumps(rows), encoding="utf-8")
    elif fault == "nested":
        (d / "Tang_testing_data.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    elif fault == "directory":
        _broken("directory", d / "Tang_testing_gt.txt")
    elif fault == "not UTF-8":
        (d / "Tang_testing_gt.txt").write_bytes((course_dir / "Tang_testing_gt.txt").read_text(encoding="utf-8").encode("big5", "replace"))
    if fault == "unreadable":
        (d / "Tang_training_data.json").chmod(0)
        proc = _run_without_root_override(["data", "check", "--data-dir", str(d)])
        code, err = proc.returncode, proc.stderr
    else:
        stderr = io.StringIO()
        sys_stderr, sys.stderr = sys.stderr, stderr
        try:
            code = tangpoem_main(["data", "check", "--data-dir", str(d)])
        finally:
            sys.stderr = sys_stderr
        err = stderr.getvalue()
    assert code == 2
    assert err.startswith(f"error: {d}/{message}") and err.count("\n") == 1


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_grade_reports_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        html, table = tmp_path / "new" / "report.html", tmp_path / "new" / "class.csv"
        assert grade_main([str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--html", str(html),
                           "--csv", str(table)]) == 0
    finally:
        os.umask(old)
    for path in (html, table):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(html.parent.stat().st_mode) == 0o777 & ~umask
