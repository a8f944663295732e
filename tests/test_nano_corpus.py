"""scripts/nano_corpus.py: the notes it strips, the poems it drops, the duplicates it finds, and a
held-out split that shares no couplet with pre-training or the course rows (on the real corpus too)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import COURSE_DIR, REPO

sys.path.insert(0, str(REPO / "scripts"))
import nano_corpus  # noqa: E402
from nano_corpus import Poem  # noqa: E402

CORPUS = COURSE_DIR.parent / "quan-tang-shi" / "tang_poems.jsonl"
JUEJU = ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]


def record(paragraphs: list[str], title: str = "登鸛雀樓", author: str = "王之渙") -> dict:
    return {"author": author, "title": title, "paragraphs": paragraphs}


def test_a_note_over_several_paragraphs_goes_whole() -> None:
    # As in the corpus (line 49814): the note opens in one paragraph and closes two paragraphs later.
    paragraphs, notes = nano_corpus.strip_notes(JUEJU + ["（〖1〗京兆住持十方福應禪院講經論傳戒沙門惟果立石。", "〖2〗大宋丁巳熙寧十年八月安石師刊。", "）。"])
    assert paragraphs == tuple(JUEJU)
    assert notes == {"bracketed": True, "spanning": True, "paragraph": False}


def test_nested_and_unclosed_notes_and_restored_characters() -> None:
    paragraphs, _ = nano_corpus.strip_notes(["寧知猗（椅（原卷作「椅」））梧鳳，仁高[姒]幄披。", "菊花催晚［氣］，萸房避早寒[一]。", "雲日隱層闕（一作"])
    # Restored characters stay without their brackets; footnote marks and notes go; an unclosed note runs to the end.
    assert paragraphs == ("寧知猗梧鳳，仁高姒幄披。", "菊花催晚氣，萸房避早寒。", "雲日隱層闕")


def test_a_paragraph_citing_a_source_goes_but_a_verse_saying_yuanshi_stays() -> None:
    paragraphs, notes = nano_corpus.strip_notes(["情人南楚別，復詠在原詩。", "見《太平廣記》卷四八九引。"])
    assert paragraphs == ("情人南楚別，復詠在原詩。",)
    assert notes["paragraph"]


@pytest.mark.parametrize(("title", "paragraphs", "reason"), [
    ("句", JUEJU, "fragments_titled_ju"),
    ("句 二", JUEJU, "fragments_titled_ju"),
    ("絕句", JUEJU, None),  # a quatrain, not a fragment
    ("登樓", ["白日依山□，黃河入海流。", JUEJU[1]], "lost_characters"),
    ("登樓", ["白日依山盡/，黃河入海流。", JUEJU[1]], "stray_marks"),
    ("登樓", JUEJU[:1], "fewer_than_4_verses"),
    ("登樓", ["白日依山盡，黃河入海流欲窮千里目更上一層樓。"], "fewer_than_4_verses"),
    ("序", ["李唐以文學第士尤重聲律碩儒俊彥罔不規斯道，三百年間，詩人千計，騰聲飛實。", "郁郁彬彬，故論詩者必稱李唐焉。"], "prose_or_missing_marks"),
    # A comma missing in a seven-character poem (corpus line 16120): one "verse" of 14 characters.
    ("春日五門西望", ["百官朝下五門西，塵起春風過玉堤。", "黃帕蓋鞍呈了馬，紅羅繫項鬬回雞館松枝重牆頭出，御柳條長水面齊。",
                "唯有教坊南草綠，古苔陰地冷淒淒。"], "prose_or_missing_marks"),
    ("登樓", [], "empty"),
])
def test_drop_reasons(title: str, paragraphs: list[str], reason: str | None) -> None:
    assert nano_corpus.drop_reason(Poem(0, "", title, tuple(paragraphs))) == reason


def test_duplicates_exact_and_near_keep_the_course_copy() -> None:
    records = [
        record(["白日依山盡，黃河入海流！", JUEJU[1]], author="朱斌"),  # under another poet, listed first, other marks
        record(JUEJU),  # the course's copy
        record(["白日依山盡，黃河入海流。", "欲窮千里目，更上一重樓。"], author="無名氏"),  # one character apart
        record(["楚塞三湘接，荊門九派通。", "江流天地外，山色有無中。"], title="漢江臨泛", author="王維"),
    ]
    cleaning = nano_corpus.clean(records, course_rows=[{"input": JUEJU[0], "output": JUEJU[1]}])
    assert [p.index for p in cleaning.poems] == [1, 3]
    assert [e["index"] for e in cleaning.removed["duplicate_exact"]] == [0]
    assert [e["index"] for e in cleaning.removed["duplicate_near"]] == [2]
    assert cleaning.removed["duplicate_near"][0]["of"]["index"] == 1
    report = cleaning.report()
    assert report["records"] == 4 and report["kept"] == 2
    assert sum(rule["poems"] for rule in report["rules"].values()) == report["removed"] == 2


def test_split_keeps_couplets_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nano_corpus, "HELDOUT_EVERY", 1)  # every regular poem is sampled
    a = ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]
    b = ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]
    c = ["千山鳥飛絕，萬徑人蹤滅。", "孤舟蓑笠翁，獨釣寒江雪。"]
    d = ["君不見黃河之水天上來，奔流到海不復回。", "君不見高堂明鏡悲白髮，朝如青絲暮成雪。"]  # not regular
    e = ["孤舟蓑笠翁，獨釣寒山雨。", "君不見黃河之水天上來，奔流到海不復回。"]  # c's couplet, 2 characters apart
    poems = [Poem(i, "", f"詩{i}", tuple(p)) for i, p in enumerate([a, b, c, d, e])]
    course_rows = [{"input": "床前明月光，疑是地上霜。", "output": "舉頭望山月，低頭思故鄉。"}]  # b, one character apart
    parts = nano_corpus.split(poems, course_rows)
    assert [p.index for p in parts.heldout] == [0, 2]  # b is the course's, d and e are not regular
    assert [p.index for p in parts.pretraining] == [1, 3]  # e shares a couplet with c
    assert [x["index"] for x in parts.report["sampled_then_dropped_sharing_a_couplet_with_a_course_row"]] == [1]
    assert parts.report["check_heldout_couplets_in_pretraining"] == 0
    assert parts.report["heldout_forms"] == {"5x4": 2}


def test_near_copies_between_two_lists() -> None:
    original = Poem(0, "", "", ("白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"))
    variant = Poem(1, "", "", ("白日依山沒，黃河入海流。", "欲窮千里目，更上一重樓。"))  # 5 of its 8 four-grams shared
    other = Poem(2, "", "", ("千山鳥飛絕，萬徑人蹤滅。", "孤舟蓑笠翁，獨釣寒江雪。"))
    assert nano_corpus.near_copies([original], [other, variant]) == {0: {1}}


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"the 全唐詩 corpus is not at {CORPUS}")
def test_the_real_corpus_cleaned_and_split() -> None:
    course_rows = json.loads((COURSE_DIR / "Tang_training_data.json").read_text(encoding="utf-8"))
    cleaning, parts = nano_corpus.prepare(CORPUS, course_rows)
    kept = "".join(p.text for p in cleaning.poems)
    for mark in ("見《", "（", "）", "〖", "□", "[", "{"):
        assert mark not in kept, mark
    assert cleaning.report()["rules"]["duplicate_near"]["poems"] > 1000  # 全唐詩 lists many poems twice
    assert len(cleaning.notes["spanning_paragraphs"]) > 500  # notes the first nano's reader left in
    # The split: regular poems only, no couplet shared with pre-training or a course row, the same every run.
    assert 250 <= len(parts.heldout) <= 350
    assert all(nano_corpus.regular_verses(p) for p in parts.heldout)
    assert parts.report["check_heldout_couplets_in_pretraining"] == 0
    assert parts.report["check_heldout_couplets_in_course_rows"] == 0
    assert parts.report["check_heldout_near_copies_in_pretraining"] == 0
    assert parts.report["check_heldout_near_copies_in_course_rows"] == 0
    heldout = {p.index for p in parts.heldout}
    assert heldout.isdisjoint(p.index for p in parts.pretraining)
    assert {p.index for p in parts.unseen_by_first_nano} <= heldout
    again = nano_corpus.split(cleaning.poems, course_rows)
    assert again.report["heldout_digest"] == parts.report["heldout_digest"]


def test_bad_corpus_is_one_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "poems.jsonl"
    bad.write_text('{"author": "x", "paragraphs": ["a"]}\nnot json\n', encoding="utf-8")
    with pytest.raises(nano_corpus.InputError, match="poems.jsonl"):
        nano_corpus.read_records(bad)
