"""One run's results.txt graded against the course's ground truth, as the demo and notebook 07 show it."""

from __future__ import annotations

from typing import Any

from tangpoem.config import Config
from tangpoem.errors import InputError
from tangpoem.io import atomic_write_json
from tangpoem.table import Table

GRADES_FILE = "grades.json"


def grade_results(cfg: Config) -> Any:
    """Grade results.txt in results_dir against the course's ground truth; the report is kept as grades.json."""
    from tangpoem.data import GT_FILE, TEST_FILE, resolve_data_dir
    from tangpoem.grade import grade_paths
    from tangpoem.grade.report import report_json

    data_dir = resolve_data_dir(cfg.data_dir)
    report = grade_paths([cfg.results_path / "results.txt"], data_dir / GT_FILE, data_dir / TEST_FILE)
    atomic_write_json(cfg.results_path / GRADES_FILE, report_json(report))
    result = report.files[0]
    if result.status == "error":
        raise InputError(f"{result.path}: {result.error}")
    return result


# (header, key of the grader's MEAN_FIELDS): the same keys give each poem's score and the mean.
SCORE_COLUMNS = (("charF1", "char_f1"), ("chrF", "chrf"), ("BLEU", "bleu"), ("editSim", "edit_similarity"),
                 ("verses ok", "verse_count_ok"), ("lengths ok", "lengths_ok"), ("pingze", "pingze_score"),
                 ("rhyme", "rhyme_score"))


def grades_table(result: Any) -> Table:
    """One row per test poem (normalised scores in [0, 1]) and a last row with the mean."""
    def fmt(value: Any) -> Any:
        return "-" if value is None else float(value)

    from tangpoem.grade.grading import poem_scores

    rows = [[p.index, p.input, p.prediction[:24] + ("…" if len(p.prediction) > 24 else ""),
             *(fmt(scores[k]) for _, k in SCORE_COLUMNS)] for p in result.poems for scores in [poem_scores(p)]]
    rows.append(["mean", "", "", *(fmt(result.mean[k]) for _, k in SCORE_COLUMNS)])
    return Table(["#", "couplet 上聯", "prediction 預測", *(name for name, _ in SCORE_COLUMNS)], rows)
