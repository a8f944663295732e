"""Text normalisation for grading: punctuation, width, and variant characters.

Two views of a verse are scored: *raw* (the characters as written, after splitting on
punctuation) and *normalised* (what `normalize_text` returns: punctuation and spaces removed,
full-width forms folded by NFKC, variant characters folded with OpenCC ``t2s`` plus our
VARIANT_TABLE). Folding works one character at a time (cached), so normalised text has the
same order as the raw text and lookups stay cheap; OpenCC's phrase-level rules are not used.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import opencc

# Verse separators in predictions: Chinese and ASCII sentence punctuation, spaces, tabs, newlines.
VERSE_SEPARATORS = "，。！？；、,.!?;\t \u3000\n\r"
_SPLIT_RE = re.compile("[" + re.escape(VERSE_SEPARATORS) + "]+")

# Variants that OpenCC's t2s leaves apart (checked with opencc 1.1.x / 1.4); each maps to the
# form t2s already knows, and t2s is applied after this table. 沈/沉 is left out on purpose:
# 沈 is also a common surname, so folding it would hide real differences.
VARIANT_TABLE: dict[str, str] = {
    "劒": "劍",
    "劎": "劍",
    "簷": "檐",
    "鬭": "鬥",
    "牕": "窗",
    "窻": "窗",
    "粧": "妝",
    "峩": "峨",
    "鴈": "雁",
    "煖": "暖",
    "朞": "期",
}

_T2S = opencc.OpenCC("t2s")


def is_punctuation_or_space(char: str) -> bool:
    """True for whitespace and any Unicode punctuation or symbol (，。「」《》… and ASCII)."""
    if char.isspace():
        return True
    category = unicodedata.category(char)
    return category[0] in ("P", "S", "Z", "C")


@functools.lru_cache(maxsize=None)
def fold_char(char: str) -> str:
    """One character folded to its comparison form, or '' for punctuation and spaces."""
    char = unicodedata.normalize("NFKC", char)
    if len(char) != 1:
        # NFKC can expand (e.g. '…' -> '...'); keep only non-punctuation results.
        return "".join(fold_char(c) for c in char)
    if is_punctuation_or_space(char):
        return ""
    char = VARIANT_TABLE.get(char, char)
    converted = _T2S.convert(char)
    return converted if len(converted) == 1 else char


def normalize_text(text: str) -> str:
    """Text with punctuation/spaces removed and variants folded (see module docstring)."""
    return "".join(fold_char(c) for c in text)


def normalized_with_index(text: str) -> list[tuple[str, int]]:
    """(folded character, index in `text`) for each character that survives normalisation.

    Used to find a normalised prefix (the input couplet) and cut the raw text at the same place.
    """
    pairs: list[tuple[str, int]] = []
    for index, char in enumerate(text):
        for folded in fold_char(char):
            pairs.append((folded, index))
    return pairs


def split_verses(text: str) -> list[str]:
    """Verses of a prediction: split on punctuation, spaces and tabs; empty pieces dropped."""
    return [piece for piece in _SPLIT_RE.split(text) if piece]


@functools.lru_cache(maxsize=None)
def _width_char(char: str) -> str:
    char = unicodedata.normalize("NFKC", char)
    return "".join(c for c in char if not is_punctuation_or_space(c))


def strip_punctuation(text: str) -> str:
    """Text with punctuation/spaces removed and widths folded (NFKC), variants kept as written.

    Prosody uses this view: the 平水韻 table is in traditional characters as written.
    """
    return "".join(_width_char(c) for c in text)
