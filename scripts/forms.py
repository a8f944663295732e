"""Poem forms (verse length, verse count) and the best verse count a first couplet alone can give.

The course's test format shows only the first couplet. Its verse length is the poem's, but nothing in
it says whether 2 more verses follow (jueju) or 6 (lüshi), so strict form accuracy has a ceiling
below 1: the share a rule from verse length to verse count gets right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from tangpoem.grade.normalize import split_verses

Form = tuple[int, int]  # (characters per verse, verses in the whole poem)


def poem_form(text: str) -> Form:
    """(length of the first verse, number of verses) of a poem, its verses split at the grader's verse
    marks (the raw text, not normalised: for the course's clean poems the same counts)."""
    verses = split_verses(text)
    return (len(verses[0]) if verses else 0, len(verses))


def form_mix(forms: Iterable[Form]) -> dict[str, int]:
    """Counts of each form, keyed "5x8" (five-character lüshi), most common first."""
    return {f"{length}x{count}": n for (length, count), n in Counter(forms).most_common()}


def majority_count_by_length(forms: Iterable[Form]) -> dict[int, int]:
    """For each verse length, its most common verse count (the rule a couplet-only predictor can learn)."""
    by_length: dict[int, Counter[int]] = defaultdict(Counter)
    for length, count in forms:
        by_length[length][count] += 1
    return {length: counts.most_common(1)[0][0] for length, counts in sorted(by_length.items())}


def count_accuracy(rule: dict[int, int], forms: Iterable[Form]) -> float:
    """Share of poems whose verse count `rule` (verse length -> count) gets right."""
    forms = list(forms)
    return sum(rule.get(length) == count for length, count in forms) / len(forms) if forms else 0.0
