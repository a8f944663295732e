"""`tangpoem grade`: grade students' results files against the test GT.

Exit status: 0 every file graded, 1 some file could not be graded (it gets an error row),
2 bad arguments or a missing/broken GT or test file (one `error: ...` line on stderr).
With --judge-url/--judge-model an LLM judge also scores each poem; poems it could not score are
marked in the reports and on stderr, and do not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from tangpoem.errors import InputError
from tangpoem.grade.judge_client import add_judge_arguments, settings_from_args
from tangpoem.io import atomic_write_text


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
    add_judge_arguments(parser)


def run_grade(args: argparse.Namespace) -> int:
    """Grade, print, write the requested reports; return the exit status."""
    # Imported here so that `tangpoem train` & co. do not load the grading stack (sacrebleu, OpenCC, pingshui).
    from tangpoem.grade.grading import grade_paths
    from tangpoem.grade.report import class_csv, format_text, render_html, report_json

    try:
        judge_settings = settings_from_args(args)
        report = grade_paths(args.results, args.gt, args.test)
        if judge_settings:
            from tangpoem.grade.judge import judge_results

            judge_results(report.files, judge_settings)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.csv:
            atomic_write_text(args.csv, class_csv(report))
        if args.html:
            atomic_write_text(args.html, render_html(report))
    except OSError as exc:
        print(f"error: cannot write report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(format_text(report))
    for result in report.errors:
        print(f"error: {result.error}", file=sys.stderr)
    for result in report.graded:
        if result.judge and result.judge.failed:
            number, reason = result.judge.errors[0]
            print(f"judge: {result.path}: {result.judge.failed} of {len(result.poems)} poems not judged "
                  f"(poem {number}: {reason})", file=sys.stderr)
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tangpoem grade", description=__doc__.splitlines()[0])
    add_grade_arguments(parser)
    return run_grade(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
