"""The LLM judge: a format and a content score (0-10) per poem, pass counts, and the course's marks.

    from tangpoem.grade import grade_paths
    from tangpoem.grade.judge import judge_report, judge_file
    report = judge_report(grade_paths(paths, gt, test), "http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    judgement = judge_file(file_result, url, model)       # one FileResult, e.g. in notebook 07

Each graded poem gets `poem.judge` (a PoemVerdict) and each graded file `result.judge` (a
FileJudgement); the text, CSV, JSON and HTML reports show them. The deterministic scores are never
touched: a poem the judge could not score is marked "failed" with the reason, and grading goes on.
The rubric is `templates/judge_rubric.j2`; the HTTP side is `judge_client.py`.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from statistics import fmean
from typing import TYPE_CHECKING, Any

from tangpoem.grade.judge_client import JudgeClient, JudgeError, JudgeSettings

if TYPE_CHECKING:
    from tangpoem.grade.grading import ClassReport, FileResult, PoemResult

# The course's pass marks for one poem (GPT-4 judge, 0-10 each).
FORMAT_PASS = 8
CONTENT_PASS = 7
# The course's bands, per part (format, content): poems that pass -> marks. The course gives
# "more than 10 -> 5, 8-9 -> 4, 6-7 -> 3, 4-5 -> 2, 2-3 -> 1", which leaves exactly 10 in no band;
# we read it as "10 以上" (10 or more, as the Chinese usually means) -> 5. Fewer than 2 -> 0.
MARK_BANDS = ((10, 5), (8, 4), (6, 3), (4, 2), (2, 1))
MARKS_PER_PART = 5
BREAKER_LIMIT = 3  # poems in a row without a reply (server down, key refused) before the rest are not sent


def marks_for(passing: int) -> int:
    """Marks for one part from the number of poems that pass it (the course's bands)."""
    return next((marks for least, marks in MARK_BANDS if passing >= least), 0)


@dataclass(frozen=True)
class PoemVerdict:
    status: str                  # "judged"; "empty" (no continuation: 0 and 0, not asked); "failed" (no scores)
    format_score: float | None   # 0-10, None when failed
    content_score: float | None
    reason: str                  # the judge's reason, or why there is no score
    cached: bool = False         # the answer came from the cache

    @property
    def passes_format(self) -> bool:
        return self.format_score is not None and self.format_score >= FORMAT_PASS

    @property
    def passes_content(self) -> bool:
        return self.content_score is not None and self.content_score >= CONTENT_PASS


@dataclass
class FileJudgement:
    model: str
    with_reference: bool
    verdicts: list[PoemVerdict] = field(default_factory=list)  # one per poem, in test order

    def _count(self, status: str) -> int:
        return sum(v.status == status for v in self.verdicts)

    @property
    def judged(self) -> int:
        return self._count("judged")

    @property
    def empty(self) -> int:
        return self._count("empty")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def complete(self) -> bool:
        """False when some poem has no score: the pass counts and marks are then a lower bound."""
        return self.failed == 0

    @property
    def format_passing(self) -> int:
        return sum(v.passes_format for v in self.verdicts)

    @property
    def content_passing(self) -> int:
        return sum(v.passes_content for v in self.verdicts)

    @property
    def format_marks(self) -> int:
        return marks_for(self.format_passing)

    @property
    def content_marks(self) -> int:
        return marks_for(self.content_passing)

    @property
    def marks(self) -> int:
        return self.format_marks + self.content_marks

    def mean(self, part: str) -> float | None:
        """Mean format or content score over the poems that have one (empty poems count as 0)."""
        values = [getattr(v, f"{part}_score") for v in self.verdicts if v.status != "failed"]
        return fmean(values) if values else None

    @property
    def errors(self) -> list[tuple[int, str]]:
        """(poem number, reason) of every poem the judge could not score."""
        return [(number, v.reason) for number, v in enumerate(self.verdicts, start=1) if v.status == "failed"]


EMPTY_VERDICT = PoemVerdict("empty", 0.0, 0.0, "no continuation to judge: scored 0 without asking")


def reference_poem(poem: PoemResult) -> str:
    """The original poem: the input couplet and the GT verses, punctuated ，。 in turn."""
    return poem.input + "".join(verse + ("，" if n % 2 == 0 else "。") for n, verse in enumerate(poem.gt_verses))


class _Breaker:
    """Stops sending once BREAKER_LIMIT poems in a row got no reply (after all their tries): a dead server fails fast."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._last = ""

    def refusal(self) -> str | None:
        with self._lock:
            if self._in_a_row < BREAKER_LIMIT:
                return None
            return f"not sent: the judge failed {self._in_a_row} poems in a row (last: {self._last})"

    def record(self, failure: str | None) -> None:
        with self._lock:
            self._in_a_row = self._in_a_row + 1 if failure else 0
            self._last = failure or ""


def _verdict(client: JudgeClient, breaker: _Breaker, job: tuple[str, str, str | None]) -> PoemVerdict:
    refusal = breaker.refusal()
    if refusal:
        return PoemVerdict("failed", None, None, refusal)
    try:
        answer = client.ask(*job)
    except JudgeError as exc:
        breaker.record(str(exc) if exc.transport else None)
        return PoemVerdict("failed", None, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - an odd reply must not stop a class's grading; say what it was
        breaker.record(None)
        return PoemVerdict("failed", None, None, client.redact(f"{type(exc).__name__}: {exc}"[:200]))
    breaker.record(None)
    return PoemVerdict("judged", answer.format_score, answer.content_score, answer.reason, answer.cached)


def judge_results(results: list[FileResult], settings: JudgeSettings) -> list[FileResult]:
    """Ask the judge about every poem of the graded files; sets poem.judge and result.judge."""
    from tqdm import tqdm

    graded = [r for r in results if r.status == "graded"]
    # One request per distinct (couplet, continuation, reference): copied answers are asked once.
    jobs: dict[tuple[str, str, str | None], list[PoemResult]] = {}
    for result in graded:
        for poem in result.poems:
            if not poem.prediction.strip():
                poem.judge = EMPTY_VERDICT
                continue
            reference = reference_poem(poem) if settings.with_reference else None
            jobs.setdefault((poem.input, poem.prediction, reference), []).append(poem)
    if jobs:
        client, breaker = JudgeClient(settings), _Breaker()
        pool = ThreadPoolExecutor(max_workers=settings.workers)
        try:  # the bar shows on a terminal only (disable=None): logs, notebooks and tests stay quiet
            with tqdm(total=len(jobs), desc="judge", unit="poem", file=sys.stderr, leave=False, disable=None) as bar:
                futures = {pool.submit(_verdict, client, breaker, job): poems for job, poems in jobs.items()}
                for future in as_completed(futures):
                    for poem in futures[future]:
                        poem.judge = future.result()
                    bar.update()
        finally:  # on Ctrl-C, drop the queued poems instead of asking them all first
            pool.shutdown(wait=True, cancel_futures=True)
    for result in graded:
        result.judge = FileJudgement(settings.model, settings.with_reference, [p.judge for p in result.poems])
    return results


def judge_report(report: ClassReport, url: str, model: str, **options: Any) -> ClassReport:
    """Judge every graded file of `report` in place and return it.

    `options` are JudgeSettings' fields: api_key_env ("OPENAI_API_KEY"), cache_dir, timeout (60 s),
    tries (4), retry_delay (1 s), workers (4), temperature (0), with_reference (False).
    """
    judge_results(report.files, JudgeSettings(url, model, **options))
    return report


def judge_file(result: FileResult, url: str, model: str, **options: Any) -> FileJudgement | None:
    """Judge one graded file (e.g. grade_predictions' result) in place; None for an error row."""
    judge_results([result], JudgeSettings(url, model, **options))
    return result.judge
