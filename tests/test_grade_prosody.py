import pytest

from tangpoem.grade.prosody import pingze_fit, prosody_scores, readings, rhyme_fit

COUPLET = ["君問歸期未有期", "巴山夜雨漲秋池"]
REST = ["何當共剪西窗燭", "卻話巴山夜雨時"]


def test_a_regular_jueju_fits_fully_and_rhymes():
    scores = prosody_scores(COUPLET, REST)
    assert scores.pattern == "七言 仄起首句入韻"
    assert scores.pingze_score == 1.0 and scores.pingze_checked == 16 and scores.pingze_unknown == 0
    assert scores.rhyme_groups == ("上平聲四支",)
    assert (scores.rhyme_checked, scores.rhyme_ok, scores.rhyme_score) == (1, 1, 1.0)


def test_a_ze_ending_on_verse_four_breaks_rhyme_and_tone():
    scores = prosody_scores(COUPLET, ["何當共剪西窗燭", "卻話巴山夜雨晚"])
    assert scores.rhyme_score == 0.0
    assert scores.pingze_fit == 15  # only position 7 of verse 4 is off


def test_free_positions_one_three_five_are_not_checked():
    # 七言: positions 1, 3, 5 (君/歸/未 in verse 1) may take any tone.
    swapped = ["巴問夜期雨有期", "巴山夜雨漲秋池"]
    assert prosody_scores(swapped, REST).pingze_score == 1.0


def test_unknown_characters_are_reported_not_counted_as_errors():
    scores = prosody_scores(COUPLET, ["何當共剪西窗燭", "卻話巴山夜雨㐀"])
    assert scores.pingze_unknown == 1 and scores.rhyme_unknown == 1
    assert scores.pingze_score == 1.0 and scores.rhyme_score is None


def test_ze_rhymed_poem_rhymes_in_its_ze_group():
    groups, checked, ok, unknown = rhyme_fit(["飛蓋去芳園", "蘭橈遊翠渚", "萍間日彩亂", "荷處香風舉"])
    assert groups == ("上聲六語",) and (checked, ok, unknown) == (1, 1, 0)


def test_empty_prediction_scores_zero():
    scores = prosody_scores(COUPLET, [])
    assert scores.pingze_score == 0.0 and scores.rhyme_score == 0.0


def test_verses_of_the_wrong_length_are_skipped():
    name, checked, fit, unknown, skipped = pingze_fit([*COUPLET, "何當共剪西窗", "卻話巴山夜雨時"])
    assert skipped == 1 and checked == 12


def test_simplified_characters_are_looked_up_in_traditional_form():
    assert readings("归")[0] == readings("歸")[0] == frozenset({"平"})


@pytest.mark.parametrize("char, tones", [("東", {"平"}), ("燭", {"仄"}), ("看", {"平", "仄"})])
def test_readings(char, tones):
    assert readings(char)[0] == frozenset(tones)


def test_continuation_pingze_counts_only_the_predicted_verses():
    from tangpoem.grade.prosody import continuation_pingze

    assert continuation_pingze(COUPLET, REST) == (8, 8)  # 2 verses x 4 checked positions
    assert continuation_pingze(COUPLET, ["何當共剪西窗燭", "卻話巴山夜雨晚"]) == (7, 8)
    # A wrong-length verse is not the model's tone work: skipped, as pingze_fit skips it.
    assert continuation_pingze(COUPLET, ["何當共剪西窗", "卻話巴山夜雨時"]) == (4, 4)
    # Nothing predicted, nothing checked, whatever the couplet's own fit (pingze_score counts the couplet).
    assert continuation_pingze(COUPLET, []) == (0, 0)
    assert continuation_pingze(COUPLET, ["何當共剪西窗"]) == (0, 0)


def test_continuation_pingze_uses_the_whole_poems_pattern():
    from tangpoem.grade.prosody import continuation_pingze

    verses = [*COUPLET, "卻話巴山夜雨晚", "何當共剪西窗燭"]  # verses 3 and 4 swapped
    _, checked, fit, unknown, _ = pingze_fit(verses)
    couplet_fit, couplet_known = 8, 8  # the couplet fits the pattern chosen for the whole poem
    assert continuation_pingze(verses[:2], verses[2:]) == (fit - couplet_fit, checked - unknown - couplet_known)



# ----------------------------------------------------------------------------- marks, character by character


def test_marks_of_a_regular_jueju():
    from tangpoem.grade.prosody import poem_marks

    marks = poem_marks([*COUPLET, *REST])
    assert marks.pattern == "七言 仄起首句入韻" and marks.rhyme_groups == ("上平聲四支",)
    first = marks.verses[0].chars
    assert [m.char for m in first] == list("君問歸期未有期")
    assert [m.wanted for m in first] == [None, "仄", None, "平", None, "仄", "平"]  # 一三五不論
    assert all(m.fits for m in first if m.wanted)
    assert [v.rhyme for v in marks.verses] == [None, "sets", None, "ok"]


def test_marks_show_a_broken_tone_a_missed_rhyme_a_polyphone_and_an_unknown_character():
    from tangpoem.grade.prosody import CharMark, poem_marks

    off = poem_marks([*COUPLET, "何當共剪西窗燭", "卻話巴山夜雨晚"])
    assert off.verses[3].rhyme == "off" and off.verses[3].chars[6] == CharMark("晚", "仄", "平", False)
    unknown = poem_marks([*COUPLET, "何當共剪西窗燭", "卻話巴山夜雨㐀"])
    assert unknown.verses[3].rhyme == "unknown" and unknown.verses[3].chars[6] == CharMark("㐀", "", "平", None)
    assert poem_marks(["看山看水看"]).verses[0].chars[0].tones == "平仄"


def test_marks_skip_a_verse_of_another_length_a_verse_length_without_patterns_and_no_verses():
    from tangpoem.grade.prosody import PoemMarks, poem_marks

    marks = poem_marks([*COUPLET, "何當共剪西窗", "卻話巴山夜雨時"])
    assert all(m.wanted is None and m.fits is None for m in marks.verses[2].chars)
    four = poem_marks(["關關雎鳩", "在河之洲"])
    assert four.pattern is None and all(m.wanted is None for v in four.verses for m in v.chars)
    assert poem_marks([]) == PoemMarks(None, (), ())


def test_marks_add_up_to_the_scores_on_every_course_poem(course_dir):
    """The marks and prosody_scores never disagree: on the homework's 1040 training poems, the fitting marks
    are pingze_fit, the unknown checked ones pingze_unknown, the "ok" verses rhyme_ok."""
    from tangpoem.data import load_train_rows
    from tangpoem.grade.grading import prosody_verses
    from tangpoem.grade.normalize import split_verses
    from tangpoem.grade.prosody import poem_marks

    for row in load_train_rows(course_dir, 1040):
        couplet, rest = prosody_verses(row.input, split_verses(row.output))
        scores, marks = prosody_scores(couplet, rest), poem_marks([*couplet, *rest])
        chars = [m for v in marks.verses for m in v.chars]
        assert marks.pattern == scores.pattern and marks.rhyme_groups == scores.rhyme_groups, row.input
        assert sum(m.fits is True for m in chars) == scores.pingze_fit, row.input
        assert sum(m.wanted is not None for m in chars) == scores.pingze_checked, row.input
        assert sum(m.wanted is not None and m.fits is None for m in chars) == scores.pingze_unknown, row.input
        assert sum(v.rhyme == "ok" for v in marks.verses) == scores.rhyme_ok, row.input
        assert sum(v.rhyme == "unknown" for v in marks.verses) == scores.rhyme_unknown, row.input
