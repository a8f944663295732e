"""`tangpoem grade`: grade students' results files against the test GT.

Exit status: 0 every file graded, 1 some file could not be graded (it gets an error row; the tables,
--csv and --html are written all the same), 2 bad arguments, a missing/broken GT or test file, or a
report that could not be written (one `error: ...` line on stderr each).
With --judge-url/--judge-model an LLM judge also scores each poem; poems it could not score are
marked in the reports and on stderr, and do not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from tangpoem.errors import InputError
from tangpoem.grade.judge_client import add_judge_arguments, settings_from_args
from tangpoem.grade.limits import MAX_SUBMISSION_BYTES
from tangpoem.io import atomic_write_text, display_path


def add_grade_arguments(parser: argparse.ArgumentParser) -> None:
    """Add RESULTS and the options of `tangpoem grade` to `parser`."""
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results.txt / results.json files, or directories to search for them")
    parser.add_argument("--gt", required=True, metavar="Tang_testing_gt.txt",
                        help="ground truth: one line per test poem, verses separated by TABs")
    parser.add_argument("--test", required=True, metavar="Tang_testing_data.json",
                        help="test data: JSON list of {instruction, input}")
    parser.add_argument("--html", metavar="REPORT.html", help="also write a self-contained HTML report")
    parser.add_argument("--csv", metavar="CLASS.csv", help="also write one CSV row per file")
    parser.add_argument("--json", action="store_true",
                        help="print the JSON document (docs/grade-json-schema.md) instead of tables")
    parser.add_argument("--max-file-size", type=_positive_int, default=MAX_SUBMISSION_BYTES, metavar="BYTES",
                        help="a larger submission gets an error row instead of being graded "
                             f"(default {MAX_SUBMISSION_BYTES:,}; a course results file is ~5 KB)")
    add_judge_arguments(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def run_grade(args: argparse.Namespace) -> int:
    """Grade, print, write the requested reports; return the exit status."""
    # Imported here so that `tangpoem train` & co. do not load the grading stack (sacrebleu, OpenCC, pingshui).
    from tangpoem.grade.grading import grade_paths
    from tangpoem.grade.report import class_csv, format_text, render_html, report_json

    try:
        judge_settings = settings_from_args(args)
        report = grade_paths(args.results, args.gt, args.test, args.max_file_size)
        if judge_settings:
            from tangpoem.grade.judge import judge_results

            judge_results(report.files, judge_settings)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Each report is written even if another one cannot be, and the tables are printed regardless.
    unwritten = []
    for path, render in ((args.csv, class_csv), (args.html, render_html)):
        if path:
            try:
                atomic_write_text(path, render(report))
            except OSError as exc:
                unwritten.append(f"error: {display_path(path)}: cannot write the report ({exc.strerror or exc})")
    if args.json:
        sys.stdout.write(json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(format_text(report))
    for result in report.errors:
        print(f"error: {result.error}", file=sys.stderr)
    for result in report.graded:
        if result.judge and result.judge.failed:
            number, reason = result.judge.errors[0]
            print(f"judge: {display_path(result.path)}: {result.judge.failed} of {len(result.poems)} poems not judged "
                  f"(poem {number}: {reason})", file=sys.stderr)
    for line in unwritten:
        print(line, file=sys.stderr)
    return 2 if unwritten else report.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tangpoem grade", description=__doc__.splitlines()[0])
    add_grade_arguments(parser)
    return run_grade(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
