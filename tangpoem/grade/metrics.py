"""Content and form scores for one poem: predicted continuation verses against GT verses.

Content is scored on the first len(gt) predicted verses; verses past the GT's count are ignored
here (the grader notes them) but the form checks see all of them. Every score is in [0, 1] and
higher is better, so the GT against itself scores 1 everywhere and an empty prediction scores 0;
`edit_distance` (lower is better) is reported next to `edit_similarity = 1 - edit_distance`.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF

# Sentence-level scorers, built once (building them per call costs more than scoring).
# effective_order avoids zero BLEU for short poems that lack some 4-gram orders.
_BLEU = BLEU(tokenize="char", effective_order=True)
_CHRF = CHRF()  # character n-grams (order 6), whitespace ignored

CONTENT_FIELDS = ("verse_exact", "char_precision", "char_recall", "char_f1", "char_accuracy",
                  "edit_similarity", "edit_distance", "chrf", "bleu")
FORM_FIELDS = ("verse_count_ok", "lengths_ok", "length_ok_rate")


@dataclass(frozen=True)
class ContentScores:
    verse_exact: float       # share of GT verses matched exactly, verse by verse
    char_precision: float    # multiset character overlap / predicted characters
    char_recall: float       # multiset character overlap / GT characters
    char_f1: float
    char_accuracy: float     # same character at the same (verse, position) / GT characters
    edit_similarity: float   # 1 - edit_distance
    edit_distance: float     # Levenshtein(pred, gt) / max(len) over the joined verses
    chrf: float              # sacrebleu sentence chrF / 100
    bleu: float              # sacrebleu sentence BLEU, tokenize="char", / 100

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class FormScores:
    verse_count: int
    expected_verse_count: int
    verse_lengths: tuple[int, ...]
    expected_length: int
    verse_count_ok: float    # 1.0 when the number of predicted verses equals the GT's
    lengths_ok: float        # 1.0 when there are verses and every one has the GT's length
    length_ok_rate: float    # share of predicted verses with the GT's length (0 when none)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["verse_lengths"] = list(self.verse_lengths)
        return data


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1); two-row DP.

    A shared prefix and suffix cost nothing, so they are cut first: predictions often share
    most of the GT, which makes the DP table much smaller.
    """
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        left = i
        for j, char_b in enumerate(b):
            # min of: delete (previous[j+1]+1), insert (left+1), substitute (previous[j]+cost)
            diagonal = previous[j] + (char_a != char_b)
            up = previous[j + 1] + 1
            left = left + 1
            if up < left:
                left = up
            if diagonal < left:
                left = diagonal
            current.append(left)
        previous = current
    return previous[-1]


def _clamp(value: float) -> float:
    # sacrebleu can return 100.00000000000004 for identical strings.
    return min(1.0, max(0.0, value))


ZERO_CONTENT = ContentScores(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def content_scores(pred_verses: list[str], gt_verses: list[str]) -> ContentScores:
    """Content scores of predicted verses against GT verses (both already split, same view)."""
    return _content_scores(tuple(pred_verses[: len(gt_verses)]), tuple(gt_verses))


# Cached: the raw and normalised views are often the same strings, and classes share answers.
@functools.lru_cache(maxsize=65536)
def _content_scores(scored: tuple[str, ...], gt_verses: tuple[str, ...]) -> ContentScores:
    pred, gt = "".join(scored), "".join(gt_verses)
    if not pred or not gt:
        return ZERO_CONTENT
    exact = sum(p == g for p, g in zip(scored, gt_verses)) / len(gt_verses)
    overlap = sum((Counter(pred) & Counter(gt)).values())
    precision, recall = overlap / len(pred), overlap / len(gt)
    f1 = 2 * precision * recall / (precision + recall) if overlap else 0.0
    aligned = sum(p_char == g_char for p, g in zip(scored, gt_verses) for p_char, g_char in zip(p, g))
    distance = levenshtein(pred, gt) / max(len(pred), len(gt))
    chrf = _CHRF.sentence_score(pred, [gt]).score / 100
    bleu = _BLEU.sentence_score(pred, [gt]).score / 100
    return ContentScores(exact, precision, recall, f1, aligned / len(gt), 1 - distance, distance,
                         _clamp(chrf), _clamp(bleu))


def form_scores(pred_verses: list[str], gt_verses: list[str]) -> FormScores:
    """Form checks on ALL predicted verses (extras included), lengths counted normalised."""
    expected_length = len(gt_verses[0]) if gt_verses else 0
    lengths = tuple(len(v) for v in pred_verses)
    right = sum(length == expected_length for length in lengths)
    return FormScores(
        verse_count=len(pred_verses),
        expected_verse_count=len(gt_verses),
        verse_lengths=lengths,
        expected_length=expected_length,
        verse_count_ok=float(len(pred_verses) == len(gt_verses)),
        lengths_ok=float(bool(lengths) and right == len(lengths)),
        length_ok_rate=right / len(lengths) if lengths else 0.0,
    )
