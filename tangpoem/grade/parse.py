"""Reading the grading inputs: the GT and test files (strict) and student submissions (lenient).

Submissions are repaired where the intent is clear, and every repair is written down as a note
so graders can see what was changed. A submission that cannot be read at all raises InputError
with one line naming the file (and line or record) and the problem; the caller turns that into
an error row. GT and test problems also raise InputError; the CLI turns those into exit 2.

Every repair is linear in the length of the text (no regex that rescans the rest of a line from
each position, no search loop that restarts at the beginning), and a submission larger than
MAX_SUBMISSION_BYTES is refused before it is read, so one file's work is bounded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tangpoem.errors import InputError
from tangpoem.grade.limits import MAX_SUBMISSION_BYTES
from tangpoem.grade.normalize import normalize_text, normalized_with_index
from tangpoem.io import display_path, lone_surrogate_at, parse_json

# Line numbers longer than this are not poem numbers (and int() of thousands of digits is refused).
_MAX_NUMBER_DIGITS = 9
# How many distinct removed fragments, or lines or records, one repair note names.
_SHOWN_FRAGMENTS = 5
_LISTED_ITEMS = 5

# Chat-template leftovers that models (or copy-paste from a notebook) leave in outputs. A pasted
# system prompt, <<SYS>> ... <</SYS>>, is cut by _cut_system_blocks first (a lazy `.*?` here would
# rescan to the end of the text for every <<SYS>> without a closing tag: quadratic).
_SYS_OPEN, _SYS_CLOSE = "<<SYS>>", "<</SYS>>"
_FRAGMENT_RE = re.compile(
    r"\[/?INST\]|</?s>|<</?SYS>>|<\|[a-z_]+\|>"
    r"|\b(?:Assistant|ASSISTANT|assistant|User|USER|user|Human|HUMAN)\s*[:：]"
)
# Leading numbering: `1. `, `1.`, `1、`, `1)`, `(1)`, `（1）`, `１.`, `1:`, `1 ` ... (\d matches
# full-width digits too). Poems contain no digits, so leading digits are always a number.
_NUMBER_RE = re.compile(r"^\s*(?:[(（]\s*(\d+)\s*[)）]|(\d+)\s*[.．、,，:：)）]?)\s*")
_COURSE_NUMBER_RE = re.compile(r"^\d+\. ")
_LEADING_JUNK_RE = re.compile(r"^[\s，。！？；、,.!?;:：]+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TestPoem:
    """One test poem: its 1-based index, the input couplet as given, and the GT continuation."""

    index: int
    instruction: str
    input: str
    gt_verses: tuple[str, ...]


@dataclass
class ParsedPoem:
    """A student's answer to one test poem: the continuation text after cleaning."""

    index: int
    prediction: str
    source: str  # "line 3" or "record 3": where in the file it came from
    notes: list[str] = field(default_factory=list)


@dataclass
class Submission:
    path: str
    poems: dict[int, ParsedPoem]
    notes: list[str] = field(default_factory=list)  # file-level repairs


# ---------------------------------------------------------------- reading text


def decode_text(data: bytes, name: str) -> tuple[str, list[str]]:
    """Bytes of a text file -> (text with '\\n' line ends, repair notes). Raises InputError."""
    notes: list[str] = []
    if not data.strip():
        raise InputError(f"{name}: file is empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}: has a UTF-16 byte-order mark but is not valid UTF-16 ({exc.reason})") from None
        notes.append("file was UTF-16; decoded it")
    else:
        if b"\x00" in data:
            raise InputError(f"{name}: binary file (contains NUL bytes), not UTF-8 text")
        if data.startswith(b"\xef\xbb\xbf"):
            notes.append("removed UTF-8 byte-order mark (BOM)")
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InputError(
                f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start});"
                " save the file as UTF-8"
            ) from None
    text = text.lstrip("\ufeff")
    if "\r" in text:
        notes.append("converted CRLF/CR line endings")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(f"{name}: file is empty (only whitespace)")
    return text, notes


def read_text(path: str | Path, max_bytes: int | None = None) -> tuple[str, list[str]]:
    """A text file decoded (see decode_text); a file over `max_bytes` is refused before it is read."""
    path = Path(path)
    name = display_path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise InputError(f"{name}: {size:,} bytes, over the {max_bytes:,}-byte limit for one submission; "
                                 "if it is genuine, raise the limit with --max-file-size")
            # Never more than the limit, even where the size was not known (a file still growing).
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, expected a file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(f"{name}: over the {max_bytes:,}-byte limit for one submission; "
                         "if it is genuine, raise the limit with --max-file-size")
    return decode_text(data, name)


# ---------------------------------------------------------------- GT and test files (strict)


def build_test_poems(gt_lines: list[str], test_rows: list[dict], *, gt_name: str = "GT",
                     test_name: str = "test data") -> list[TestPoem]:
    """Pair test rows with GT lines (verses separated by TABs). Raises InputError on any problem."""
    if not isinstance(test_rows, list) or not test_rows:
        raise InputError(f"{test_name}: expected a non-empty JSON list of {{instruction, input}} objects")
    lines = [line for line in gt_lines if line.strip()]
    if len(lines) != len(test_rows):
        raise InputError(f"{gt_name}: has {len(lines)} non-empty lines but {test_name} has {len(test_rows)} poems")
    poems = []
    for number, (row, line) in enumerate(zip(test_rows, lines), start=1):
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not row["input"].strip():
            raise InputError(f"{test_name}: record {number}: expected an object with a non-empty string 'input'")
        for key in ("instruction", "input"):
            if isinstance(row.get(key), str) and (at := lone_surrogate_at(row[key])) is not None:
                raise InputError(f"{test_name}: record {number}: field '{key}' holds a lone surrogate "
                                 f"(\\u{ord(row[key][at]):04x} at character {at}); fix or remove that escape")
        verses = tuple(verse.strip() for verse in line.strip().split("\t"))
        if any(not verse for verse in verses):
            raise InputError(f"{gt_name}:{number}: empty verse (two TABs in a row or a TAB at an end)")
        poems.append(TestPoem(number, str(row.get("instruction", "")), row["input"].strip(), verses))
    return poems


def load_test_poems(gt_path: str | Path, test_path: str | Path) -> list[TestPoem]:
    """Read Tang_testing_gt.txt and Tang_testing_data.json. Raises InputError on any problem."""
    for path in (gt_path, test_path):
        if not os.path.lexists(path):
            raise InputError(f"{display_path(path)}: file not found")
    gt_text, _ = read_text(gt_path)
    test_text, _ = read_text(test_path)
    rows = parse_json(test_text, display_path(test_path))
    return build_test_poems(gt_text.split("\n"), rows, gt_name=display_path(gt_path),
                            test_name=display_path(test_path))


# ---------------------------------------------------------------- cleaning one answer


class _CoupletIndex:
    """Finds which test poem's input couplet a text starts with (compared normalised)."""

    def __init__(self, poems: list[TestPoem]):
        self.by_couplet = {normalize_text(p.input): p.index for p in poems}
        self.lengths = sorted({len(k) for k in self.by_couplet}, reverse=True)
        self.instructions = sorted({p.instruction.strip() for p in poems if p.instruction.strip()}, key=len,
                                   reverse=True)

    def match_at(self, folded: str, start: int) -> tuple[int, int] | None:
        """(poem index, couplet length) when folded[start:] starts with a test couplet (longest first)."""
        for length in self.lengths:
            if len(folded) - start < length:
                continue
            index = self.by_couplet.get(folded[start:start + length])
            if index is not None:
                return index, length
        return None

    def match_prefix(self, text: str) -> tuple[int, int] | None:
        """(poem index, raw end offset) when `text` starts with a test couplet, else None."""
        pairs = normalized_with_index(text)
        found = self.match_at("".join(c for c, _ in pairs), 0)
        return None if found is None else (found[0], pairs[found[1] - 1][1] + 1)


def _strip_fragments(text: str, couplets: _CoupletIndex, notes: list[str]) -> str:
    text, found = _cut_system_blocks(text)
    found.extend(m.group(0) for m in _FRAGMENT_RE.finditer(text))
    if found:
        text = _FRAGMENT_RE.sub(" ", text)
        distinct = sorted({f.strip() for f in found})
        shown = ", ".join(f"'{f[:20]}'" for f in distinct[:_SHOWN_FRAGMENTS])
        more = len(distinct) - _SHOWN_FRAGMENTS
        notes.append(f"removed chat-template fragments {shown}" + (f" and {more} more kinds" if more > 0 else ""))
    for instruction in couplets.instructions:
        if instruction in text:
            text = text.replace(instruction, " ")
            notes.append("removed the instruction text")
    return text


def _cut_system_blocks(text: str) -> tuple[str, list[str]]:
    """Text with each <<SYS>> ... <</SYS>> block (to the nearest closing tag) replaced by a space, and the
    blocks. One pass: once no closing tag follows an opening one, none follows any later one."""
    pieces: list[str] = []
    blocks: list[str] = []
    start = 0
    while (opening := text.find(_SYS_OPEN, start)) != -1:
        closing = text.find(_SYS_CLOSE, opening + len(_SYS_OPEN))
        if closing == -1:
            break
        end = closing + len(_SYS_CLOSE)
        pieces += [text[start:opening], " "]
        blocks.append(text[opening:end])
        start = end
    if not blocks:
        return text, blocks
    return "".join(pieces) + text[start:], blocks


def _cut_couplet(text: str, couplets: _CoupletIndex, notes: list[str], couplet_expected: bool = True) -> tuple[int | None, str]:
    """Remove the leading input couplet (and repeats of it). Returns (poem index or None, rest).
    Where the couplet is expected (results.txt lines), its absence is noted as a repair.

    The text is normalised once and each repeat is matched where the last one ended, so a line that
    repeats the couplet thousands of times costs one pass."""
    pairs = normalized_with_index(text)
    folded = "".join(c for c, _ in pairs)
    match = couplets.match_at(folded, 0)
    if match is None:
        if couplet_expected:
            notes.append("input couplet missing at the start of the answer")
        return None, _LEADING_JUNK_RE.sub("", text).strip()
    index, position = match
    repeats = 0
    while True:
        position = _next_raw_char(pairs, position)
        again = couplets.match_at(folded, position)
        if again is None or again[0] != index:
            break
        position += again[1]
        repeats += 1
    if repeats:
        notes.append(f"input couplet repeated {repeats + 1} times; removed the repeats")
    end = pairs[position - 1][1] + 1  # raw offset just past the last couplet character
    return index, _LEADING_JUNK_RE.sub("", text[end:]).strip()


def _next_raw_char(pairs: list[tuple[str, int]], position: int) -> int:
    """The first folded position at or after `position` that starts a new raw character (a raw character
    can fold to several, e.g. NFKC's '㍻'; a match that ends inside one consumes all of it)."""
    last = pairs[position - 1][1]
    while position < len(pairs) and pairs[position][1] == last:
        position += 1
    return position


def clean_answer(text: str, couplets: _CoupletIndex, notes: list[str], couplet_expected: bool = True) -> tuple[int | None, str]:
    """Fragments and instruction removed, input couplet cut off: (matched poem or None, continuation)."""
    text = _strip_fragments(text, couplets, notes)
    return _cut_couplet(text.strip(), couplets, notes, couplet_expected)


# ---------------------------------------------------------------- submissions (lenient)


@dataclass
class _Answer:
    source: str
    position: int  # 1-based order among answers in the file
    number: int | None
    matched: int | None
    prediction: str
    notes: list[str]


def _assign(answers: list[_Answer], poems: list[TestPoem], kind: str) -> tuple[dict[int, ParsedPoem], list[str]]:
    """Match answers to test poems: by input couplet, then by number, then by position."""
    count = len(poems)
    assigned: dict[int, ParsedPoem] = {}
    file_notes: list[str] = []
    leftovers: list[_Answer] = []
    seconds: list[str] = []  # answers for a poem already answered (by couplet)
    ignored: list[str] = []  # answers matched to no poem

    def take(answer: _Answer, index: int, how: str | None) -> None:
        if how:
            answer.notes.append(how)
        assigned[index] = ParsedPoem(index, answer.prediction, answer.source, answer.notes)

    for answer in answers:
        if answer.matched is None:
            leftovers.append(answer)
        elif answer.matched in assigned:
            seconds.append(f"{answer.source} (poem {answer.matched})")
        else:
            how = None
            if answer.number is not None and answer.number != answer.matched:
                how = f"numbered {answer.number} but its input couplet is test poem {answer.matched}; graded as {answer.matched}"
            take(answer, answer.matched, how)
    still: list[_Answer] = []
    for answer in leftovers:
        if answer.number is not None and 1 <= answer.number <= count and answer.number not in assigned:
            take(answer, answer.number, f"matched to poem {answer.number} by its number")
        else:
            still.append(answer)
    for answer in still:
        if answer.number is None and answer.position <= count and answer.position not in assigned:
            take(answer, answer.position, f"matched to poem {answer.position} by its position in the file")
        else:
            ignored.append(f"{answer.source} (number {answer.number if answer.number is not None else 'missing'})")
    if seconds:
        file_notes.append(f"{_listed(seconds)}: second answer for a poem (by its input couplet); kept the first")
    if ignored:
        file_notes.append(f"{_listed(ignored)}: ignored, could not be matched to a test poem")
    position_of = {a.source: a.position for a in answers}
    order = [p.index for p in sorted(assigned.values(), key=lambda p: position_of[p.source])]
    if order != sorted(order):
        file_notes.append(f"{kind}s are not in test order; matched each one to its poem")
    return assigned, file_notes


def _listed(items: list[str]) -> str:
    """'a, b' or 'a, b, c, d, e and 12 more': a note stays one short line however many items it names."""
    shown = ", ".join(items[:_LISTED_ITEMS])
    return shown if len(items) <= _LISTED_ITEMS else f"{shown} and {len(items) - _LISTED_ITEMS} more"


def parse_results_txt(text: str, name: str, poems: list[TestPoem]) -> Submission:
    """Parse course-format results.txt text (already decoded)."""
    couplets = _CoupletIndex(poems)
    notes: list[str] = []
    answers: list[_Answer] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        line_notes: list[str] = []
        line = _strip_fragments(line, couplets, line_notes)
        number, line = _read_number(line, line_notes)
        matched, prediction = _cut_couplet(line.strip(), couplets, line_notes)
        answers.append(_Answer(f"line {line_no}", len(answers) + 1, number, matched, prediction, line_notes))
    # A final newline (or a few) is normal; only blank lines before the last answer are a repair.
    blank = sum(1 for line in text.rstrip().split("\n") if not line.strip())
    if blank:
        notes.append(f"skipped {blank} blank line{'s' if blank > 1 else ''}")
    if not answers:
        raise InputError(f"{name}: file is empty (no non-blank lines)")
    assigned, file_notes = _assign(answers, poems, "line")
    return Submission(name, assigned, notes + file_notes)


def _read_number(line: str, notes: list[str]) -> tuple[int | None, str]:
    """(the line's leading number or None, the line after it); odd numbering is noted."""
    number_match = _NUMBER_RE.match(line)
    digits = number_match and (number_match.group(1) or number_match.group(2))
    if not digits:
        notes.append("no line number")
        return None, line
    rest = line[number_match.end():]
    if len(digits) > _MAX_NUMBER_DIGITS:
        notes.append(f"leading number of {len(digits)} digits ('{digits[:12]}...') is not a poem number; ignored it")
        return None, rest
    number = int(digits)
    if not _COURSE_NUMBER_RE.match(line.lstrip()):
        style = number_match.group(0).strip()
        style = style if len(style) <= 20 else style[:20] + "..."
        notes.append(f"numbering '{style}' is not the course's 'N. '; read as {number}")
    return number, rest


_PREDICT_KEYS = ("predict", "prediction", "output", "response")


def parse_results_json(text: str, name: str, poems: list[TestPoem]) -> Submission:
    """Parse results.json: a list of {instruction, input, predict} objects."""
    data = parse_json(text, name)
    if not isinstance(data, list):
        raise InputError(f"{name}: expected a JSON list of {{instruction, input, predict}} objects, "
                         f"got {type(data).__name__}")
    if not data:
        raise InputError(f"{name}: empty JSON list")
    couplets = _CoupletIndex(poems)
    notes: list[str] = []
    answers: list[_Answer] = []
    skipped: list[str] = []
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise InputError(f"{name}: record {number}: expected an object with 'input' and 'predict', "
                             f"got {type(record).__name__}")
        key = next((k for k in _PREDICT_KEYS if isinstance(record.get(k), str)), None)
        if key is None:
            skipped.append(f"record {number}")
            continue
        record_notes: list[str] = []
        if key != "predict":
            record_notes.append(f"read the prediction from '{key}' (expected 'predict')")
        by_input = None
        if isinstance(record.get("input"), str):
            found = couplets.match_prefix(_without_surrogates(record["input"], "input", record_notes))
            by_input = found[0] if found else None
        # An answer without the couplet is the normal JSON form; not a repair.
        predict = _without_surrogates(record[key], key, record_notes)
        matched, prediction = clean_answer(predict, couplets, record_notes, couplet_expected=False)
        if matched is not None and by_input is not None and matched != by_input:
            record_notes.append(f"prediction starts with the couplet of poem {matched}, input is poem {by_input}")
        answers.append(_Answer(f"record {number}", len(answers) + 1, None, by_input or matched, prediction,
                               record_notes))
    if skipped:
        notes.append(f"{_listed(skipped)}: no 'predict' string; skipped")
    if not answers:
        raise InputError(f"{name}: no record has a 'predict' string")
    assigned, file_notes = _assign(answers, poems, "record")
    return Submission(name, assigned, notes + file_notes)


def _without_surrogates(text: str, key: str, notes: list[str]) -> str:
    """`text` with lone surrogates (a JSON escape such as \\ud800 that is half a character) replaced by
    U+FFFD, which can be printed and written as UTF-8; noted."""
    if lone_surrogate_at(text) is None:
        return text
    fixed = _SURROGATE_RE.sub("\ufffd", text)
    notes.append(f"'{key}' held lone surrogate escapes (half characters); replaced them with U+FFFD")
    return fixed


def parse_submission(path: str | Path, poems: list[TestPoem],
                     max_bytes: int | None = MAX_SUBMISSION_BYTES) -> Submission:
    """Read and parse one results.txt or results.json. Raises InputError if it cannot be read."""
    text, notes = read_text(path, max_bytes)
    name = display_path(path)
    looks_json = Path(path).suffix.lower() == ".json"
    submission = (parse_results_json if looks_json else parse_results_txt)(text, name, poems)
    submission.notes[:0] = notes
    return submission
