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
