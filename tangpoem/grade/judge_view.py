"""The LLM judge's part of each report: JSON objects, CSV cells, text lines (report.py calls these).

The HTML side is the macros in templates/judge.html.j2.
"""

from __future__ import annotations

from statistics import fmean
from typing import TYPE_CHECKING, Any

from tangpoem.grade.judge import CONTENT_PASS, FORMAT_PASS, MARKS_PER_PART, FileJudgement, PoemVerdict

if TYPE_CHECKING:
    from tangpoem.grade.grading import ClassReport, FileResult

JUDGE_CSV_FIELDS = ("judge_model", "judge_format_mean", "judge_content_mean", "judge_format_passing",
                    "judge_content_passing", "judge_format_marks", "judge_content_marks", "judge_marks",
                    "judge_complete", "judge_failed", "judge_scores", "judge_reasons")


def score_text(value: float | None) -> str:
    """A 0-10 score as the judge gave it (8, 7.5); '-' for none."""
    return "-" if value is None else f"{value:g}"


def _mean_text(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- JSON


def verdict_json(verdict: PoemVerdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    return {"status": verdict.status, "format_score": verdict.format_score, "content_score": verdict.content_score,
            "reason": verdict.reason, "passes_format": verdict.passes_format,
            "passes_content": verdict.passes_content, "cached": verdict.cached}


def judgement_json(judgement: FileJudgement | None) -> dict[str, Any] | None:
    if judgement is None:
        return None
    return {
        "model": judgement.model,
        "with_reference": judgement.with_reference,
        "poems": len(judgement.verdicts), "judged": judgement.judged, "empty": judgement.empty,
        "failed": judgement.failed, "complete": judgement.complete,
        "format": {"pass_at": FORMAT_PASS, "passing": judgement.format_passing, "marks": judgement.format_marks,
                   "mean": judgement.mean("format")},
        "content": {"pass_at": CONTENT_PASS, "passing": judgement.content_passing,
                    "marks": judgement.content_marks, "mean": judgement.mean("content")},
        "marks": judgement.marks,
        "max_marks": 2 * MARKS_PER_PART,
    }


def class_judgement_json(report: ClassReport) -> dict[str, Any] | None:
    """Class means of the judged files' marks; None when no file was judged."""
    judged = [f.judge for f in report.files if f.judge is not None]
    if not judged:
        return None
    return {"model": judged[0].model, "files": len(judged), "failed_poems": sum(j.failed for j in judged),
            "format_marks": fmean(j.format_marks for j in judged),
            "content_marks": fmean(j.content_marks for j in judged), "marks": fmean(j.marks for j in judged)}


# ---------------------------------------------------------------- CSV


def judge_csv_cells(judgement: FileJudgement | None) -> list[str]:
    """The JUDGE_CSV_FIELDS of one file's row (all empty when the file was not judged)."""
    if judgement is None:
        return [""] * len(JUDGE_CSV_FIELDS)
    scores = " ".join(f"{score_text(v.format_score)}/{score_text(v.content_score)}" for v in judgement.verdicts)
    reasons = " | ".join(f"{n}: {'failed: ' if v.status == 'failed' else ''}{v.reason}"
                         for n, v in enumerate(judgement.verdicts, start=1))
    return [judgement.model, _mean_text(judgement.mean("format")), _mean_text(judgement.mean("content")),
            str(judgement.format_passing), str(judgement.content_passing), str(judgement.format_marks),
            str(judgement.content_marks), str(judgement.marks), str(judgement.complete).lower(),
            str(judgement.failed), scores, reasons]


# ---------------------------------------------------------------- text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _marks(count: int) -> str:
    return f"{count} mark{'' if count == 1 else 's'}"


def marks_line(judgement: FileJudgement) -> str:
    """'format 12/15 pass (>= 8): 5 marks; content ...: 4 marks; total 9/10' (+ a lower-bound warning)."""
    total = len(judgement.verdicts)
    line = (f"format {judgement.format_passing}/{total} pass (>= {FORMAT_PASS}): {_marks(judgement.format_marks)}; "
            f"content {judgement.content_passing}/{total} pass (>= {CONTENT_PASS}): {_marks(judgement.content_marks)}; "
            f"total {judgement.marks}/{2 * MARKS_PER_PART}")
    if not judgement.complete:
        line += f" (at least: {judgement.failed} poem{'s' if judgement.failed > 1 else ''} not judged)"
    return line


def judge_file_lines(result: FileResult) -> list[str]:
    """The judge's block under a file's table: marks, then one line per poem."""
    judgement = result.judge
    if judgement is None:
        return []
    lines = [f"   judge {judgement.model}: {marks_line(judgement)}", "     #  format  content  status  reason"]
    for poem, verdict in zip(result.poems, judgement.verdicts):
        lines.append(f"   {poem.index:>3}  {score_text(verdict.format_score):>6}  {score_text(verdict.content_score):>7}"
                     f"  {verdict.status:<6}  {_clip(verdict.reason, 70)}")
    return lines


def judge_summary_text(report: ClassReport) -> str | None:
    """'== judge' section: one row per judged file; None when no file was judged."""
    judged = [f for f in report.files if f.judge is not None]
    if not judged:
        return None
    width = max(len("file"), *(len(f.path) for f in judged))
    lines = [f"{'file':<{width}}  format pass  content pass  marks  not judged"]
    for result in judged:
        j = result.judge
        format_cell, content_cell = f"{j.format_passing} -> {j.format_marks}", f"{j.content_passing} -> {j.content_marks}"
        lines.append(f"{result.path:<{width}}  {format_cell:>11}  {content_cell:>12}  "
                     f"{f'{j.marks}/{2 * MARKS_PER_PART}':>5}  {j.failed:>10}")
    if any(not f.judge.complete for f in judged):
        lines.append("(a file with poems not judged has at least these marks: those poems count as not passing)")
    summary = class_judgement_json(report)
    lines.append(f"{len(judged)} files judged by {summary['model']}: mean marks {summary['marks']:.2f}/{2 * MARKS_PER_PART}"
                 f" (format {summary['format_marks']:.2f}, content {summary['content_marks']:.2f});"
                 f" a poem passes format at >= {FORMAT_PASS}, content at >= {CONTENT_PASS} (0-10)")
    return "== judge\n" + "\n".join(lines)
