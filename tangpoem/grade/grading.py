"""Grading: parsed answers -> per-poem scores -> per-file and class results (dataclasses).

The functions here are what the CLI and the notebooks call:
`grade_paths` (files and directories), `grade_file` (one submission), and
`grade_predictions` (in-memory continuations, one per test poem, in test order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from tangpoem.errors import InputError
from tangpoem.grade.limits import MAX_ANSWER_CHARS, MAX_SUBMISSION_BYTES
from tangpoem.grade.metrics import (CONTENT_FIELDS, FORM_FIELDS, ContentScores, FormScores, content_scores,
                                    form_scores)
from tangpoem.grade.normalize import normalize_text, split_verses, strip_punctuation
from tangpoem.grade.parse import (ParsedPoem, Submission, TestPoem, _CoupletIndex, build_test_poems, clean_answer,
                                  load_test_poems, parse_submission)
from tangpoem.grade.prosody import ProsodyScores, prosody_scores
from tangpoem.io import display_path

if TYPE_CHECKING:
    from tangpoem.grade.judge import FileJudgement, PoemVerdict

PROSODY_FIELDS = ("pingze_score", "rhyme_score")
# Names of the per-file means, in report order (raw content scores carry a "raw_" prefix).
MEAN_FIELDS = (*CONTENT_FIELDS, *(f"raw_{name}" for name in CONTENT_FIELDS), *FORM_FIELDS, *PROSODY_FIELDS)
RESULT_NAMES = ("results.txt", "results.json")


@dataclass
class PoemResult:
    index: int
    input: str
    gt_verses: list[str]
    status: str                    # "graded" or "missing"
    source: str | None             # "line 3" / "record 3" / None when missing
    prediction: str                # the continuation after repairs ("" when missing)
    verses: list[str]              # predicted verses as written (split on punctuation)
    normalized: ContentScores      # scores on normalised text (the headline scores)
    raw: ContentScores             # scores on the verses as written
    form: FormScores
    prosody: ProsodyScores
    notes: list[str] = field(default_factory=list)
    judge: PoemVerdict | None = None  # the LLM judge's scores, when asked for (grade/judge.py)


@dataclass
class FileResult:
    path: str
    status: str                    # "graded" or "error"
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    poems: list[PoemResult] = field(default_factory=list)
    mean: dict[str, float | None] = field(default_factory=dict)
    judge: FileJudgement | None = None  # pass counts and marks from the LLM judge, when asked for

    @property
    def missing(self) -> int:
        return sum(p.status == "missing" for p in self.poems)

    @property
    def repair_count(self) -> int:
        return len(self.notes) + sum(len(p.notes) for p in self.poems)


@dataclass
class ClassReport:
    gt_path: str
    test_path: str
    files: list[FileResult]

    @property
    def graded(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "graded"]

    @property
    def errors(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "error"]

    @property
    def mean(self) -> dict[str, float | None]:
        return mean_scores([f.mean for f in self.graded])

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def mean_scores(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Field-wise mean over rows, ignoring None (e.g. a rhyme score with nothing to check)."""
    means: dict[str, float | None] = {}
    for name in MEAN_FIELDS:
        values = [row[name] for row in rows if row.get(name) is not None]
        means[name] = fmean(values) if values else None
    return means


def poem_scores(poem: PoemResult) -> dict[str, float | None]:
    """One poem's scores under the keys of MEAN_FIELDS (normalised content scores, raw_* the raw ones)."""
    row: dict[str, float | None] = {}
    for name in CONTENT_FIELDS:
        row[name] = getattr(poem.normalized, name)
        row[f"raw_{name}"] = getattr(poem.raw, name)
    for name in FORM_FIELDS:
        row[name] = getattr(poem.form, name)
    for name in PROSODY_FIELDS:
        row[name] = getattr(poem.prosody, name)
    return row


def prosody_verses(couplet: str, predicted_verses: list[str]) -> tuple[list[str], list[str]]:
    """(couplet verses, predicted verses) as the prosody checks read them: punctuation gone, no empty verses."""
    def clean(verses: list[str]) -> list[str]:
        return [v for v in (strip_punctuation(v) for v in verses) if v]

    return clean(split_verses(couplet)), clean(predicted_verses)


def grade_poem(test: TestPoem, answer: ParsedPoem | None) -> PoemResult:
    """Score one answer (None = missing, scored as an empty prediction)."""
    notes = list(answer.notes) if answer else [f"poem {test.index} missing from the file; scored 0"]
    prediction = answer.prediction if answer else ""
    if len(prediction) > MAX_ANSWER_CHARS:
        notes.append(f"answer is {len(prediction):,} characters; graded its first {MAX_ANSWER_CHARS:,}")
        prediction = prediction[:MAX_ANSWER_CHARS]
    raw_verses = split_verses(prediction)
    normalized_verses = [v for v in (normalize_text(v) for v in raw_verses) if v]
    gt_normalized = [normalize_text(v) for v in test.gt_verses]
    if answer and not normalized_verses:
        notes.append("empty prediction; scored 0")
    extra = len(normalized_verses) - len(gt_normalized)
    if extra > 0:
        notes.append(f"{extra} verse{'s' if extra > 1 else ''} past the GT's {len(gt_normalized)}: "
                     "not scored for content, counted by the form checks")
    return PoemResult(
        index=test.index,
        input=test.input,
        gt_verses=list(test.gt_verses),
        status="graded" if answer else "missing",
        source=answer.source if answer else None,
        prediction=prediction,
        verses=raw_verses,
        normalized=content_scores(normalized_verses, gt_normalized),
        raw=content_scores(raw_verses, list(test.gt_verses)),
        form=form_scores(normalized_verses, gt_normalized),
        prosody=prosody_scores(*prosody_verses(test.input, raw_verses)),
        notes=notes,
    )


def grade_submission(submission: Submission, tests: list[TestPoem]) -> FileResult:
    poems = [grade_poem(test, submission.poems.get(test.index)) for test in tests]
    result = FileResult(submission.path, "graded", notes=list(submission.notes), poems=poems)
    result.mean = mean_scores([poem_scores(p) for p in poems])
    return result


def grade_file(path: str | os.PathLike, tests: list[TestPoem],
               max_bytes: int | None = MAX_SUBMISSION_BYTES) -> FileResult:
    """Grade one results.txt / results.json. Whatever goes wrong with this one file becomes its error
    row (one line), so that one submission never stops a class: InputError says what is wrong with the
    file; any other exception is a case the grader does not handle yet, named as such."""
    name = display_path(path)
    if not Path(path).is_file():  # reading a pipe would wait forever
        return FileResult(name, "error", error=f"{name}: not a regular file (a broken symbolic link, a pipe or a "
                                               "device); submit the file itself")
    try:
        return grade_submission(parse_submission(path, tests, max_bytes), tests)
    except InputError as exc:
        return FileResult(name, "error", error=one_line(str(exc)))
    except Exception as exc:  # not KeyboardInterrupt or SystemExit: those still stop the run
        what = one_line(f"{type(exc).__name__}: {exc}", 200)
        return FileResult(name, "error", error=f"{name}: could not be graded ({what}); this is a bug in the "
                                               "grader, please report it with this file")


def one_line(text: str, limit: int = 1000) -> str:
    """`text` on one line of at most `limit` characters: an error row never breaks a table or a CSV row."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def grade_predictions(predictions: list[str], gt_lines: list[str], test_rows: list[dict],
                      name: str = "<predictions>") -> FileResult:
    """Grade in-memory model outputs, one per test poem in test order.

    Each prediction is cleaned like a submission line (chat fragments, a repeated input
    couplet); `gt_lines` are GT lines (verses separated by TABs), `test_rows` the test records.
    """
    tests = build_test_poems(gt_lines, test_rows)
    if len(predictions) != len(tests):
        raise InputError(f"{name}: {len(predictions)} predictions for {len(tests)} test poems")
    couplets = _CoupletIndex(tests)
    poems: dict[int, ParsedPoem] = {}
    for test, text in zip(tests, predictions):
        notes: list[str] = []
        _, continuation = clean_answer(str(text), couplets, notes, couplet_expected=False)  # the usual in-memory form
        poems[test.index] = ParsedPoem(test.index, continuation, f"prediction {test.index}", notes)
    return grade_submission(Submission(name, poems), tests)


def find_result_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and every results.txt / results.json (or *results.txt/json) below directories
    (whatever they are but folders: a broken link named results.txt gets its error row too)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                below = [p for p in path.rglob("*") if p.name.lower().endswith(RESULT_NAMES) and not p.is_dir()]
            except OSError as exc:
                raise InputError(f"{display_path(path)}: cannot list this directory ({exc.strerror or exc})") from None
            if not below:
                raise InputError(f"{display_path(path)}: no results.txt or results.json below this directory")
            found.extend(sorted(below))
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise InputError(f"{display_path(path)}: not a regular file or directory")
        else:
            raise InputError(f"{display_path(path)}: no such file or directory")
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path, None)
    return list(unique)


def grade_paths(paths: list[str | os.PathLike], gt_path: str | os.PathLike, test_path: str | os.PathLike,
                max_bytes: int | None = MAX_SUBMISSION_BYTES) -> ClassReport:
    """Grade every submission in `paths` (each file over `max_bytes` becomes an error row). Raises
    InputError for bad paths or a bad GT/test file."""
    tests = load_test_poems(gt_path, test_path)
    files = [grade_file(path, tests, max_bytes) for path in find_result_files(paths)]
    return ClassReport(display_path(gt_path), display_path(test_path), files)
