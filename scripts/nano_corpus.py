"""The 全唐詩 corpus for tangpoem-nano: read it, clean it (with a report of what each rule removed),
split off our held-out poems, and turn the rest into pre-training documents.

Used by scripts/pretrain_nano.py (on the GPU machine, whose Python has torch and transformers but no
OpenCC or rapidfuzz, so this file needs neither) and benchmarks/nano_heldout.py. Both call
`prepare(corpus, course_rows)`, so they see the same poems and the same split.

    python scripts/nano_corpus.py --corpus ../shared/data/quan-tang-shi/tang_poems.jsonl \
        --course-rows ../shared/data/GenAI-Hw5/Tang_training_data.json --report docs/nano-corpus.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/...` from a checkout, tangpoem not installed
    sys.path.insert(0, str(ROOT))

from tangpoem.errors import InputError  # noqa: E402

HELDOUT_EVERY = 100  # about 1 in 100 of the regular poems is held out
EXAMPLES = 4  # examples of each rule in the report


@dataclass(frozen=True)
class Poem:
    index: int  # line number in tang_poems.jsonl, 0-based
    author: str
    title: str
    paragraphs: tuple[str, ...]  # usually one punctuated couplet each

    @property
    def text(self) -> str:
        return "".join(self.paragraphs)

    @property
    def verses(self) -> list[str]:
        return [v for v in VERSE_MARK.split(self.text) if v]


VERSE_MARK = re.compile(r"[，。！？；、：]")


# ----------------------------------------------------------------------------- reading and notes

def read_records(path: str | Path) -> list[dict]:
    """The records of tang_poems.jsonl(.gz): {"author", "title", "paragraphs": [...]}, one per line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("paragraphs"), list):
                    raise InputError(f"{path}:{number}: not a poem record (needs a 'paragraphs' list)")
                records.append(record)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the corpus ({e}); give a JSON Lines file of poems") from None
    return records


# Editors' notes: （一作…）, 〖1〗, [一], {…}. They nest, and a note may run over several paragraphs
# ("（〖1〗這首詩…", "…錄附於後。", "）。"), so they are removed over the whole text, not paragraph by paragraph.
NOTE_BRACKETS = {"（": "）", "〖": "〗", "[": "]", "{": "}", "［": "］"}
# Square brackets also hold a character the editors restored ("仁高[姒]幄披", "菊花催晚［氣］"): kept, unwrapped.
# Numbered ones ([一], [一○]) are footnote marks, and longer ones notes.
RESTORED = re.compile(r"[\[［]([^\[\]［］（）〖〗{}一二三四五六七八九十○〇0-9]{1,5})[\]］]")
# A paragraph left outside brackets that cites a source: "見《太平廣記》卷四八九引。", "按：《全唐詩》卷一○九收此二句".
NOTE_PARAGRAPH = re.compile(r"^按：|(?=.*《)(?=.*(見《|錄自|引自|原注|原卷|原詩|《全唐詩|卷[〇○一二三四五六七八九十百]{2,}"
                            r"|[伯斯][〇○一二三四五六七八九]{3,}|校作|注云|題擬|下缺|上缺|以上))")
ONLY_MARKS = re.compile(r"[，。！？；、：\s]*")


def strip_brackets(text: str) -> tuple[str, bool]:
    """`text` without bracketed notes (nested ones too; an unclosed one runs to the end), and whether
    a note spanned a line break. Restored characters in square brackets stay, without the brackets."""
    out, closing, spanned = [], [], False
    for char in RESTORED.sub(r"\1", text):
        if char in NOTE_BRACKETS:
            closing.append(NOTE_BRACKETS[char])
        elif closing and char == closing[-1]:
            closing.pop()
        elif not closing:
            out.append(char)
        elif char == "\n":
            spanned = True
    return "".join(out), spanned


def strip_notes(paragraphs: Iterable[str]) -> tuple[tuple[str, ...], dict[str, bool]]:
    """Paragraphs without editors' notes, and which kinds of note were there."""
    original = [str(p).strip() for p in paragraphs]
    text, spanned = strip_brackets("\n".join(original))
    kept, note_paragraphs = [], False
    for paragraph in ("".join(p.split()) for p in text.split("\n")):  # no spaces (U+3000 either) inside verses
        if ONLY_MARKS.fullmatch(paragraph):  # "）。" leaves "。"
            continue
        if NOTE_PARAGRAPH.match(paragraph):
            note_paragraphs = True
            continue
        kept.append(paragraph)
    bracketed = text != "\n".join(original)
    return tuple(kept), {"bracketed": bracketed, "spanning": spanned, "paragraph": note_paragraphs}


# ----------------------------------------------------------------------------- rules that drop a poem

FRAGMENT_TITLE = re.compile(r"^(又|殘|斷|佚|逸)?句(\s|$)")  # 句, 句 一, 斷句, 又句: lines collected from lost poems
LOST_CHARACTER = re.compile(r"[□■○●\ue000-\uf8ff\u2ff0-\u2fff]")  # lacunae, private-use glyphs, ⿰-style descriptions
STRAY_MARK = re.compile(r"[A-Za-z0-9Ａ-Ｚａ-ｚ０-９/\\|=\-_<>〈〉（）［］\[\]{}〖〗]")
MIN_VERSES = 4


def broken_verses(verses: list[str]) -> bool:
    """Prose, or verses whose marks are missing: a verse of 16+ characters, a median over 9, or, where
    most verses have 5 or 7 characters, one at least twice that long (a dropped comma; four-character
    poems are left alone: their longer lines are often meant)."""
    lengths = sorted(len(v) for v in verses)
    if lengths[-1] >= 16 or lengths[len(lengths) // 2] > 9:
        return True
    common, n = Counter(lengths).most_common(1)[0]
    return common in (5, 7) and n >= 0.75 * len(lengths) and lengths[-1] >= 2 * common


def drop_reason(poem: Poem) -> str | None:
    """Why a poem (notes already removed) is not for the model, or None."""
    if not poem.paragraphs:
        return "empty"
    if FRAGMENT_TITLE.match(poem.title):
        return "fragments_titled_ju"
    if LOST_CHARACTER.search(poem.text):
        return "lost_characters"
    if STRAY_MARK.search(poem.text):
        return "stray_marks"
    verses = poem.verses
    if len(verses) < MIN_VERSES:
        return "fewer_than_4_verses"
    if broken_verses(verses):
        return "prose_or_missing_marks"
    return None


RULES = {
    "empty": "no text, or nothing left once editors' notes are removed",
    "fragments_titled_ju": "titled 句 / 斷句 / 又句 …: single lines collected from lost poems, not one poem",
    "lost_characters": "□ (a lost character), ○ ●, private-use glyphs or ⿰-style character descriptions",
    "stray_marks": "Latin letters, digits, slashes or unmatched brackets left in the text",
    "fewer_than_4_verses": "a lone line, a single couplet or 3 verses: sayings, prophecies, fragments",
    "prose_or_missing_marks": "a verse of 16+ characters, a median verse over 9 (prose), or in a 5- or 7-character poem a verse twice that long (a comma missing)",
    "duplicate_exact": "the same text (punctuation and a few variant characters aside) as an earlier poem",
    "duplicate_near": "half or more of its 4-character sequences in one earlier poem (listed twice, under two poets or two titles)",
}


# ----------------------------------------------------------------------------- duplicates

# A few variant pairs common in this corpus, folded before comparing texts (OpenCC is not available on
# the GPU machine; the 4-gram overlap below tolerates the variants this misses).
VARIANTS = str.maketrans({"爲": "為", "爾": "尔", "眞": "真", "靑": "青", "淸": "清", "户": "戶", "㩦": "攜",
                          "鴈": "雁", "劒": "劍", "牕": "窗", "窻": "窗", "煖": "暖", "峩": "峨", "粧": "妝"})


def fold(verse: str) -> str:
    return verse.translate(VARIANTS)


def shingles(poem: Poem, n: int = 4) -> frozenset[str]:
    """The poem's n-character sequences inside verses (never across a verse mark)."""
    return frozenset(v[i : i + n] for v in map(fold, poem.verses) for i in range(max(1, len(v) - n + 1)))


NEAR_DUPLICATE = 0.5  # share of the shorter poem's 4-grams found in the other poem
COMMON_SHINGLE = 50  # a 4-gram in more poems than this is a set phrase, no sign of a duplicate


def find_duplicates(poems: list[Poem], first: set[int] = frozenset()) -> dict[int, tuple[str, Poem]]:
    """Poems (by position) that repeat a poem kept before them: position -> (rule, the kept poem).
    Poems whose index is in `first` (the course's) are looked at first, then the rest in corpus order,
    so a course poem is the copy that stays."""
    grams = [shingles(p) for p in poems]
    frequency = Counter(g for gs in grams for g in gs)
    seen_text: dict[str, int] = {}
    by_gram: dict[str, list[int]] = defaultdict(list)  # rare 4-gram -> kept poems holding it
    duplicates: dict[int, tuple[str, Poem]] = {}
    for j in sorted(range(len(poems)), key=lambda j: (poems[j].index not in first, j)):
        poem = poems[j]
        text = fold("".join(poem.verses))
        if text in seen_text:
            duplicates[j] = ("duplicate_exact", poems[seen_text[text]])
            continue
        shared = Counter(i for g in grams[j] if frequency[g] <= COMMON_SHINGLE for i in by_gram[g])
        for i, _ in shared.most_common(5):
            overlap = len(grams[i] & grams[j]) / max(1, min(len(grams[i]), len(grams[j])))
            if overlap >= NEAR_DUPLICATE:
                duplicates[j] = ("duplicate_near", poems[i])
                break
        if j in duplicates:
            continue
        seen_text[text] = j
        for g in grams[j]:
            if frequency[g] <= COMMON_SHINGLE:
                by_gram[g].append(j)
    return duplicates


# ----------------------------------------------------------------------------- the cleaning pass

@dataclass
class Cleaning:
    records: int
    poems: list[Poem]  # kept, in corpus order
    removed: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def report(self) -> dict[str, Any]:
        def summary(groups: dict[str, list[dict]], what: dict[str, str] | None = None) -> dict:
            return {name: {**({"what": what[name]} if what else {}), "poems": len(items), "examples": items[:EXAMPLES]}
                    for name, items in groups.items()}

        return {"records": self.records, "kept": len(self.poems), "removed": sum(map(len, self.removed.values())),
                "rules": summary({name: self.removed.get(name, []) for name in RULES}, RULES),
                "notes_removed": summary(self.notes)}


def _example(poem: Poem, record: dict | None = None, **extra: Any) -> dict:
    shown = {"index": poem.index, "author": poem.author, "title": poem.title, "text": poem.text[:80]}
    if record is not None:
        shown["original"] = "".join(map(str, record["paragraphs"]))[:120]
    return {**shown, **extra}


def clean(records: list[dict], course_rows: list[dict]) -> Cleaning:
    """Every rule applied in order; a poem is counted under the first rule that drops it. Of two
    duplicates the course's copy stays (the course rows are poems of this corpus, as printed)."""
    course_texts = {str(r.get("input", "")) + str(r.get("output", "")) for r in course_rows}
    course_poems = {i for i, r in enumerate(records) if "".join(map(str, r["paragraphs"])) in course_texts}
    candidates: list[Poem] = []
    result = Cleaning(records=len(records), poems=[])
    for index, record in enumerate(records):
        paragraphs, notes = strip_notes(record["paragraphs"])
        title, _ = strip_brackets(str(record.get("title", "")))
        poem = Poem(index, str(record.get("author", "")), " ".join(title.split()), paragraphs)  # U+3000 -> one space
        if notes["spanning"]:
            result.notes["spanning_paragraphs"].append(_example(poem, record))
        elif notes["bracketed"]:
            result.notes["within_a_paragraph"].append(_example(poem, record))
        if notes["paragraph"]:
            result.notes["paragraph_citing_a_source"].append(_example(poem, record))
        reason = drop_reason(poem)
        if reason:
            result.removed[reason].append(_example(poem))
        else:
            candidates.append(poem)
    duplicates = find_duplicates(candidates, course_poems)
    for position, poem in enumerate(candidates):
        if position in duplicates:
            rule, earlier = duplicates[position]
            result.removed[rule].append(_example(poem, of=_example(earlier)))
        else:
            result.poems.append(poem)
    return result


# ----------------------------------------------------------------------------- our held-out split

def regular_verses(poem: Poem) -> list[str] | None:
    """The verses of a regular jueju or lüshi (4 or 8 verses, all 5 or all 7 characters, one punctuated
    couplet per paragraph), else None."""
    verses = poem.verses
    if len(verses) in (4, 8) and len({len(v) for v in verses}) == 1 and len(verses[0]) in (5, 7):
        if all(len(p) == 2 * len(verses[0]) + 2 for p in poem.paragraphs):
            return verses
    return None


def couplets(verses: list[str]) -> list[tuple[str, str]]:
    folded = [fold(v) for v in verses]
    return [(folded[i], folded[i + 1]) for i in range(0, len(folded) - 1, 2)]


def _differs_little(a: tuple[str, str], b: tuple[str, str], most: int = 2) -> bool:
    """Two couplets of the same shape that differ in at most `most` characters (variants, typos)."""
    if tuple(map(len, a)) != tuple(map(len, b)):
        return False
    return sum(x != y for va, vb in zip(a, b) for x, y in zip(va, vb)) <= most


class CoupletIndex:
    """Couplets of many poems, found by either verse; a match allows a couple of differing characters."""

    def __init__(self) -> None:
        self.by_verse: dict[str, list[tuple[tuple[str, str], Any]]] = defaultdict(list)

    def add(self, verses: list[str], owner: Any) -> None:
        for couplet in couplets(verses):
            for verse in couplet:
                self.by_verse[verse].append((couplet, owner))

    def owners(self, verses: list[str]) -> set:
        return {owner for couplet in couplets(verses) for verse in couplet
                for other, owner in self.by_verse.get(verse, ()) if _differs_little(couplet, other)}


def _is_sampled(poem: Poem) -> bool:
    return int(hashlib.sha1(poem.text.encode("utf-8")).hexdigest(), 16) % HELDOUT_EVERY == 0


def course_row_verses(course_rows: list[dict]) -> list[list[str]]:
    return [[v for v in VERSE_MARK.split(str(r.get("input", "")) + str(r.get("output", ""))) if v] for r in course_rows]


# The first tangpoem-nano (shipped until nano2) held out poems by the same hash, over its own text: notes
# removed paragraph by paragraph with this pattern, and only poems past the corpus's 5001st.
FIRST_NANO_NOTE = re.compile(r"（[^）]*）|〖[^〗]*〗|\[[^\]]*\]|\{[^}]*\}")


def first_nano_unseen(records: list[dict], heldout: list[Poem]) -> list[Poem]:
    """Those of our held-out poems that the first nano never saw, so that it can be evaluated on them
    too: poems its `is_heldout` kept out of its pre-training, sharing no couplet with a poem it trained
    on (it removed no duplicates; ~1 in 25 of them had a copy in its pre-training)."""
    first_heldout, trained_on = set(), CoupletIndex()
    for index, record in enumerate(records):
        paragraphs = tuple(p for p in (FIRST_NANO_NOTE.sub("", str(p)).strip() for p in record["paragraphs"]) if p)
        poem = Poem(index, "", "", paragraphs)
        if index >= 5001 and paragraphs and regular_verses(poem) and _is_sampled(poem):
            first_heldout.add(index)
        else:
            trained_on.add(poem.verses, index)
    return [p for p in heldout if p.index in first_heldout and not trained_on.owners(p.verses)]


@dataclass
class Split:
    heldout: list[Poem]
    pretraining: list[Poem]
    report: dict[str, Any]
    unseen_by_first_nano: list[Poem] = field(default_factory=list)  # the held-out poems the first nano never saw


def near_copies(targets: list[Poem], others: list[Poem]) -> dict[int, set[int]]:
    """For each target (by position), the others (by position) holding half or more of the shorter
    poem's 4-character sequences: the `duplicate_near` rule of `clean`, between two lists."""
    target_grams = [shingles(p) for p in targets]
    by_gram: dict[str, list[int]] = defaultdict(list)
    for t, grams in enumerate(target_grams):
        for g in grams:
            by_gram[g].append(t)
    found: dict[int, set[int]] = defaultdict(set)
    for o, other in enumerate(others):
        grams = shingles(other)
        shared = Counter(t for g in grams for t in by_gram.get(g, ()))
        for t, n in shared.items():
            if n / max(1, min(len(grams), len(target_grams[t]))) >= NEAR_DUPLICATE:
                found[t].add(o)
    return found


def split(poems: list[Poem], course_rows: list[dict]) -> Split:
    """Our held-out poems: regular poems, 1 in HELDOUT_EVERY by a hash of the text, none sharing a couplet
    with a course row or a near copy of one (checked against the course file: its rows are spread over
    the corpus's first ~16,000 poems, not its first 5001; couplets are matched by either verse, 2
    differing characters allowed; near copies as `duplicate_near`). Pre-training gets the rest, less any
    poem sharing a couplet with a held-out one or a near copy of one (`clean` removed most already)."""
    course = CoupletIndex()
    for i, verses in enumerate(course_row_verses(course_rows)):
        course.add(verses, i)
    sampled = [p for p in poems if regular_verses(p) and _is_sampled(p)]
    course_poems = [Poem(-1 - i, "", "", (str(r.get("input", "")), str(r.get("output", "")))) for i, r in enumerate(course_rows)]
    near_course = near_copies(sampled, course_poems)
    in_course = [p for i, p in enumerate(sampled) if course.owners(p.verses) or i in near_course]
    heldout = [p for i, p in enumerate(sampled) if not (course.owners(p.verses) or i in near_course)]

    held = CoupletIndex()
    for p in heldout:
        held.add(p.verses, p.index)
    heldout_ids = {p.index for p in heldout}
    rest = [p for p in poems if p.index not in heldout_ids]
    near_rest = {o for copies in near_copies(heldout, rest).values() for o in copies}
    sharing = [p for o, p in enumerate(rest) if held.owners(p.verses) or o in near_rest]
    excluded = heldout_ids | {p.index for p in sharing}
    pretraining = [p for p in poems if p.index not in excluded]

    forms = Counter(f"{len(regular_verses(p)[0])}x{len(p.verses)}" for p in heldout)  # type: ignore[index]
    return Split(heldout, pretraining, {
        "heldout": len(heldout), "heldout_forms": dict(forms.most_common()),
        "heldout_digest": heldout_digest(heldout),
        "sampled_then_dropped_sharing_a_couplet_with_a_course_row": [_example(p) for p in in_course],
        "pretraining": len(pretraining),
        "kept_out_of_pretraining_sharing_a_couplet_with_a_heldout_poem": [_example(p) for p in sharing],
        "check_heldout_couplets_in_pretraining": sum(bool(held.owners(p.verses)) for p in pretraining),
        "check_heldout_couplets_in_course_rows": sum(bool(course.owners(p.verses)) for p in heldout),
        "check_heldout_near_copies_in_pretraining": len(near_copies(heldout, pretraining)),
        "check_heldout_near_copies_in_course_rows": len(near_copies(heldout, course_poems)),
    })


def heldout_digest(heldout: list[Poem]) -> str:
    """A short fingerprint of the held-out split, so a model's pre-training log can be checked against it."""
    return hashlib.sha1(",".join(str(p.index) for p in heldout).encode()).hexdigest()[:12]


def prepare(corpus: str | Path, course_rows: list[dict], first_nano: bool = True) -> tuple[Cleaning, Split]:
    """The cleaned corpus and our split (with `first_nano`, also which held-out poems the first nano never saw)."""
    records = read_records(corpus)
    cleaning = clean(records, course_rows)
    parts = split(cleaning.poems, course_rows)
    if not first_nano:
        return cleaning, parts
    parts.unseen_by_first_nano = first_nano_unseen(records, parts.heldout)
    parts.report["heldout_unseen_by_first_nano"] = len(parts.unseen_by_first_nano)
    parts.report["heldout_unseen_by_first_nano_forms"] = dict(Counter(
        f"{len(p.verses[0])}x{len(p.verses)}" for p in parts.unseen_by_first_nano).most_common())
    return cleaning, parts


# ----------------------------------------------------------------------------- pre-training documents

# Nano learns the [INST] format on a *different* task (a poem from its title), as Breeze-Instruct knows
# its chat format before the homework; continuing a first couplet is left for LoRA fine-tuning to teach.
TITLE_INSTRUCTION = "請以下面的題目寫一首唐詩。"
# One candidate also sees a task next to the homework's, in other words: go on from a poem's first
# couplet. It makes the homework's step smaller (and the before/after contrast with it); docs/nano.md.
CONTINUE_INSTRUCTION = "請接著寫完這首詩。"

SHAPES = ("plain", "titled", "request", "continuation")


@dataclass
class Documents:
    """Each pre-training poem tokenized once, in the shapes its document can take: "plain" (BOS poem
    EOS), "titled" (BOS title newline poem EOS), "request" (a title-to-poem request in the course
    prompt) and "continuation" (CONTINUE_INSTRUCTION with the first couplet, answered by the rest);
    prompts are not learned. All documents lie end to end in two flat arrays, so that an epoch is one
    gather: `start[shape][i]` and `length[shape][i]` (0 where poem i has no such shape) locate them."""
    ids: Any  # (total,) int64
    labels: Any  # (total,) int64, IGNORE_INDEX where nothing is learned (BOS, the request's prompt)
    start: dict[str, Any]  # shape -> (poems,) int64
    length: dict[str, Any]

    @classmethod
    def build(cls, tokenizer: Any, poems: list[Poem]) -> "Documents":
        import numpy as np

        from tangpoem.data import Row
        from tangpoem.prompt import build_prompt
        from tangpoem.tokens import IGNORE_INDEX, encode_training_row

        def batch_ids(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        # The request is encode_training_row's (BOS + course prompt, then the poem + EOS, the prompt masked),
        # tokenized in one batch for speed; the first titled poem is checked against encode_training_row.
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        texts = batch_ids([p.text for p in poems])
        titles = batch_ids([f"{p.title}\n" for p in poems])
        prompts = batch_ids([build_prompt(tokenizer, TITLE_INSTRUCTION, p.title) for p in poems])
        continued = [len(p.paragraphs) >= 2 and len(p.verses) >= 4 for p in poems]
        firsts = batch_ids([build_prompt(tokenizer, CONTINUE_INSTRUCTION, p.paragraphs[0]) for p in poems])
        rests = batch_ids(["".join(p.paragraphs[1:]) for p in poems])
        ids: list[int] = []
        labels: list[int] = []
        start = {shape: np.zeros(len(poems), dtype=np.int64) for shape in SHAPES}
        length = {shape: np.zeros(len(poems), dtype=np.int64) for shape in SHAPES}
        for i, (poem, text, title, prompt) in enumerate(zip(poems, texts, titles, prompts)):
            shapes = {"plain": ([bos] + text + [eos], None)}
            if poem.title:
                shapes["titled"] = ([bos] + title + text + [eos], None)
                shapes["request"] = ([bos] + prompt + text + [eos], [IGNORE_INDEX] * (1 + len(prompt)) + text + [eos])
            if continued[i]:
                first, rest = [bos] + firsts[i], rests[i] + [eos]
                shapes["continuation"] = (first + rest, [IGNORE_INDEX] * len(first) + rest)
            for shape, (doc, doc_labels) in shapes.items():
                start[shape][i], length[shape][i] = len(ids), len(doc)
                ids += doc
                labels += [IGNORE_INDEX] + doc[1:] if doc_labels is None else doc_labels
        documents = cls(np.array(ids, dtype=np.int64), np.array(labels, dtype=np.int64), start, length)
        titled = next((i for i, p in enumerate(poems) if p.title), None)
        if titled is not None:
            row = encode_training_row(tokenizer, Row(TITLE_INSTRUCTION, poems[titled].title, poems[titled].text), cutoff_len=100_000)
            at, n = start["request"][titled], length["request"][titled]
            assert documents.ids[at : at + n].tolist() == row.input_ids and documents.labels[at : at + n].tolist() == row.labels
        return documents

    def epoch(self, seed: int, request_share: float, continuation_share: float = 0.0) -> tuple[Any, Any, Any]:
        """Every poem once, shuffled, as (input_ids, labels, position_ids) end to end: a request with
        probability `request_share` (titled poems), a continuation with `continuation_share`, else
        plain text, half of it under its title. Positions restart at each document."""
        import numpy as np

        rng = np.random.default_rng(seed)
        poems = len(self.start["plain"])
        draw, half = rng.random(poems), rng.random(poems)
        shape = np.where(half < 0.5, 1, 0)  # titled / plain
        shape = np.where(self.length["titled"] == 0, 0, shape)
        shape = np.where((draw >= request_share) & (draw < request_share + continuation_share) & (self.length["continuation"] > 0), 3, shape)
        shape = np.where((draw < request_share) & (self.length["request"] > 0), 2, shape)
        order = rng.permutation(poems)
        starts = np.stack([self.start[s] for s in SHAPES])[shape, np.arange(poems)][order]
        lengths = np.stack([self.length[s] for s in SHAPES])[shape, np.arange(poems)][order]
        offsets = np.cumsum(lengths) - lengths  # where each document begins in the epoch
        positions = np.arange(lengths.sum()) - np.repeat(offsets, lengths)
        index = np.repeat(starts, lengths) + positions
        return self.ids[index], self.labels[index], positions


def read_course_rows(path: str | Path) -> list[dict]:
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read the course's training rows ({e}); give Tang_training_data.json") from None
    if not isinstance(rows, list):
        raise InputError(f"{path}: expected a JSON list of course rows")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Clean the corpus and split off our held-out poems; print or write the report.")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/quan-tang-shi/tang_poems.jsonl"))
    parser.add_argument("--course-rows", type=Path, default=Path("../shared/data/GenAI-Hw5/Tang_training_data.json"))
    parser.add_argument("--report", type=Path, help="write the cleaning and split report here (JSON)")
    args = parser.parse_args()
    cleaning, parts = prepare(args.corpus, read_course_rows(args.course_rows))
    report = {"cleaning": cleaning.report(), "split": parts.report}
    if args.report:
        from tangpoem.io import atomic_write_json

        atomic_write_json(args.report, report)
    for name, rule in report["cleaning"]["rules"].items():
        print(f"{name:<26}{rule['poems']:>6}")
    print(f"kept {len(cleaning.poems)} of {cleaning.records}; held out {len(parts.heldout)} {parts.report['heldout_forms']}, "
          f"{len(parts.unseen_by_first_nano)} of them unseen by the first nano; pre-training {len(parts.pretraining)}")


def exit_on_input_error(main_function) -> None:
    """Run a script's main; bad input ends it with one line and exit status 2, as the CLI does."""
    try:
        main_function()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    exit_on_input_error(main)
