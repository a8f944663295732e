"""Presenting a ClassReport: text tables, class CSV, JSON (schema in docs/grade-json-schema.md), HTML.

The text tables and the HTML show a bounded part of each file (limits.SHOWN_*), saying what they cut,
so one huge or strange submission cannot make the report unreadable; the JSON keeps everything graded.
"""

from __future__ import annotations

import csv
import difflib
import io
from typing import Any

import jinja2

from tangpoem.grade.grading import MEAN_FIELDS, ClassReport, FileResult, PoemResult, poem_scores
from tangpoem.grade.limits import SHOWN_EXTRA_VERSES, SHOWN_NOTES, SHOWN_PREDICTION_CHARS, SHOWN_VERSE_CHARS
from tangpoem.grade.judge_view import (JUDGE_CSV_FIELDS, class_judgement_json, judge_csv_cells, judge_file_lines,
                                       judge_summary_text, judgement_json, marks_line, score_text, verdict_json)

SCHEMA_VERSION = 2  # 2: the LLM judge's "judge" objects (docs/grade-json-schema.md)

# Columns of the text tables: (header, key of MEAN_FIELDS), for each poem and for the means alike.
_MEAN_COLUMNS = (("exact", "verse_exact"), ("charF1", "char_f1"), ("align", "char_accuracy"),
                 ("editSim", "edit_similarity"), ("chrF", "chrf"), ("BLEU", "bleu"), ("count", "verse_count_ok"),
                 ("length", "lengths_ok"), ("pingze", "pingze_score"), ("rhyme", "rhyme_score"))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def shown_text(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how many more there are."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters not shown)"


def shown_notes(notes: list[str]) -> list[str]:
    """The first SHOWN_NOTES notes, and a line saying how many more there are."""
    if len(notes) <= SHOWN_NOTES:
        return notes
    return [*notes[:SHOWN_NOTES], f"... {len(notes) - SHOWN_NOTES:,} more notes not shown (all are in --json)"]


# ---------------------------------------------------------------- text table


def format_file_table(result: FileResult) -> str:
    """The per-poem table of one file, followed by its repair notes."""
    lines = [f"== {result.path}"]
    if result.status == "error":
        lines.append(f"   ERROR: {result.error}")
        return "\n".join(lines)
    header = "  #  status   " + " ".join(f"{name:>7}" for name, _ in _MEAN_COLUMNS) + "  notes"
    lines.append(header)
    for poem in result.poems:
        scores = poem_scores(poem)
        cells = " ".join(f"{_fmt(scores[key]):>7}" for _, key in _MEAN_COLUMNS)
        lines.append(f"{poem.index:>3}  {poem.status:<7}  {cells}  {len(poem.notes)}")
    cells = " ".join(f"{_fmt(result.mean[key]):>7}" for _, key in _MEAN_COLUMNS)
    lines.append(f"{'mean':>12}  {cells}")
    lines.extend(judge_file_lines(result))
    for note in shown_notes(result.notes):
        lines.append(f"   repair: {note}")
    for poem in result.poems:
        for note in shown_notes(poem.notes):
            lines.append(f"   poem {poem.index}: {note}")
    return "\n".join(lines)


def format_summary(report: ClassReport) -> str:
    """One row per file with its mean scores, then the class mean and counts."""
    width = max([len("file"), *(len(f.path) for f in report.files)])
    counts = "  status  missing  repairs "  # the columns between the file name and the scores
    lines = [f"{'file':<{width}}{counts}" + " ".join(f"{name:>7}" for name, _ in _MEAN_COLUMNS)]
    for result in report.files:
        if result.status == "error":
            lines.append(f"{result.path:<{width}}  error   {result.error}")
            continue
        cells = " ".join(f"{_fmt(result.mean[key]):>7}" for _, key in _MEAN_COLUMNS)
        lines.append(f"{result.path:<{width}}  graded  {result.missing:>7}  {result.repair_count:>7} {cells}")
    mean = report.mean
    cells = " ".join(f"{_fmt(mean[key]):>7}" for _, key in _MEAN_COLUMNS)
    lines.append(f"{'class mean':<{width}}{' ' * len(counts)}{cells}")
    lines.append(f"{len(report.files)} files: {len(report.graded)} graded, {len(report.errors)} could not be graded")
    return "\n".join(lines)


def format_text(report: ClassReport) -> str:
    judge = judge_summary_text(report)
    return "\n\n".join([*(format_file_table(f) for f in report.files), "== summary\n" + format_summary(report),
                        *([judge] if judge else [])]) + "\n"


# ---------------------------------------------------------------- CSV


def class_csv(report: ClassReport) -> str:
    """One row per file: path, status, error, counts, and every mean score."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "status", "error", "poems", "missing", "repairs", *MEAN_FIELDS, *JUDGE_CSV_FIELDS])
    for result in report.files:
        means = [("" if result.mean.get(k) is None else f"{result.mean[k]:.6f}") for k in MEAN_FIELDS]
        writer.writerow([result.path, result.status, result.error or "", len(result.poems), result.missing,
                         result.repair_count, *means, *judge_csv_cells(result.judge)])
    return buffer.getvalue()


# ---------------------------------------------------------------- JSON


def poem_json(poem: PoemResult) -> dict[str, Any]:
    return {
        "index": poem.index,
        "status": poem.status,
        "source": poem.source,
        "input": poem.input,
        "gt_verses": poem.gt_verses,
        "prediction": poem.prediction,
        "verses": poem.verses,
        "scores": poem.normalized.as_dict(),
        "raw_scores": poem.raw.as_dict(),
        "form": poem.form.as_dict(),
        "prosody": poem.prosody.as_dict(),
        "repairs": poem.notes,
        "judge": verdict_json(poem.judge),
    }


def file_json(result: FileResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "status": result.status,
        "error": result.error,
        "repairs": result.notes,
        "missing": result.missing if result.status == "graded" else None,
        "mean": result.mean if result.status == "graded" else None,
        "poems": [poem_json(p) for p in result.poems],
        "judge": judgement_json(result.judge),
    }


def report_json(report: ClassReport) -> dict[str, Any]:
    """The --json document; its shape is documented in docs/grade-json-schema.md."""
    return {
        "schema_version": SCHEMA_VERSION,
        "gt": report.gt_path,
        "test": report.test_path,
        "files": [file_json(f) for f in report.files],
        "summary": {
            "files": len(report.files),
            "graded": len(report.graded),
            "errors": len(report.errors),
            "mean": report.mean,
            "judge": class_judgement_json(report),
        },
    }


# ---------------------------------------------------------------- HTML


def diff_segments(prediction: str, gt: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Character diff as (kind, text) runs for each side; kind is 'same', 'changed', 'extra' or 'missing'."""
    matcher = difflib.SequenceMatcher(None, prediction, gt, autojunk=False)
    pred_runs: list[tuple[str, str]] = []
    gt_runs: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pred_runs.append(("same", prediction[i1:i2]))
            gt_runs.append(("same", gt[j1:j2]))
        else:
            if i2 > i1:
                pred_runs.append(("changed" if tag == "replace" else "extra", prediction[i1:i2]))
            if j2 > j1:
                gt_runs.append(("changed" if tag == "replace" else "missing", gt[j1:j2]))
    return pred_runs, gt_runs


def _poem_view(poem: PoemResult) -> dict[str, Any]:
    # Diff verse by verse so that a line break in one side lines up with the other; a bounded number
    # of verses past the GT's, each cut to a bounded length (a run of kind "cut" says how much is left).
    rows = []
    shown = min(max(len(poem.verses), len(poem.gt_verses)), len(poem.gt_verses) + SHOWN_EXTRA_VERSES)
    for number in range(shown):
        pred = poem.verses[number] if number < len(poem.verses) else ""
        gt = poem.gt_verses[number] if number < len(poem.gt_verses) else ""
        pred_runs, gt_runs = diff_segments(pred[:SHOWN_VERSE_CHARS], gt[:SHOWN_VERSE_CHARS])
        for runs, text in ((pred_runs, pred), (gt_runs, gt)):
            if len(text) > SHOWN_VERSE_CHARS:
                runs.append(("cut", f"... ({len(text) - SHOWN_VERSE_CHARS:,} more)"))
        rows.append({"pred": pred_runs, "gt": gt_runs})
    lengths = ", ".join(map(str, poem.form.verse_lengths[:len(poem.gt_verses) + SHOWN_EXTRA_VERSES]))
    if len(poem.form.verse_lengths) > len(poem.gt_verses) + SHOWN_EXTRA_VERSES:
        lengths += ", ..."
    return {"poem": poem, "rows": rows, "hidden_verses": max(len(poem.verses) - shown, 0), "lengths": lengths,
            "prediction": shown_text(poem.prediction, SHOWN_PREDICTION_CHARS), "notes": shown_notes(poem.notes)}


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tangpoem.grade", "templates"),
    autoescape=True,  # every submitted string is escaped; a <script> in a results file is shown as text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["score"] = _fmt
_ENV.filters["score10"] = score_text
_ENV.globals["marks_line"] = marks_line


def render_html(report: ClassReport) -> str:
    """A self-contained HTML page (inline CSS and JS, no network)."""
    template = _ENV.get_template("report.html.j2")
    files = [{"result": f, "notes": shown_notes(f.notes), "poems": [_poem_view(p) for p in f.poems]}
             for f in report.files]
    return template.render(report=report, files=files, mean_columns=_MEAN_COLUMNS, mean=report.mean,
                           judge_summary=class_judgement_json(report))
