import pytest
from sacrebleu.metrics import CHRF

from tangpoem.grade.metrics import CONTENT_FIELDS, content_scores, form_scores, levenshtein

GT = ["白日依山盡", "黃河入海流"]


def test_gt_against_itself_scores_one_everywhere():
    scores = content_scores(GT, GT)
    for name in CONTENT_FIELDS:
        expected = 0.0 if name == "edit_distance" else 1.0
        assert getattr(scores, name) == pytest.approx(expected), name
    form = form_scores(GT, GT)
    assert (form.verse_count_ok, form.lengths_ok, form.length_ok_rate) == (1.0, 1.0, 1.0)


def test_empty_prediction_scores_zero_everywhere():
    scores = content_scores([], GT)
    for name in CONTENT_FIELDS:
        expected = 1.0 if name == "edit_distance" else 0.0
        assert getattr(scores, name) == expected, name
    form = form_scores([], GT)
    assert (form.verse_count_ok, form.lengths_ok, form.length_ok_rate) == (0.0, 0.0, 0.0)


def test_one_substituted_character_by_hand():
    scores = content_scores(["白日依山盡", "黃河入海去"], GT)
    assert scores.verse_exact == 0.5
    assert scores.char_precision == scores.char_recall == scores.char_f1 == pytest.approx(0.9)
    assert scores.char_accuracy == pytest.approx(0.9)
    assert scores.edit_distance == pytest.approx(0.1) and scores.edit_similarity == pytest.approx(0.9)
    # char BLEU: n-gram precisions 9/10, 8/9, 7/8, 6/7, brevity penalty 1 -> (0.6) ** 0.25
    assert scores.bleu == pytest.approx(0.6 ** 0.25)
    # chrF (orders 1-6, P = R at each order): mean of 9/10, 8/9, 7/8, 6/7, 5/6, 4/5
    assert scores.chrf == pytest.approx((9 / 10 + 8 / 9 + 7 / 8 + 6 / 7 + 5 / 6 + 4 / 5) / 6, abs=1e-4)
    assert scores.chrf == pytest.approx(CHRF().sentence_score("白日依山盡黃河入海去", ["白日依山盡黃河入海流"]).score / 100)


def test_missing_verse_by_hand():
    scores = content_scores(["白日依山盡"], GT)
    assert scores.verse_exact == 0.5
    assert (scores.char_precision, scores.char_recall) == (1.0, 0.5)
    assert scores.char_f1 == pytest.approx(2 / 3)
    assert scores.char_accuracy == 0.5
    assert scores.edit_similarity == 0.5


def test_swapped_verses_keep_the_characters_but_lose_positions():
    scores = content_scores(["黃河入海流", "白日依山盡"], GT)
    assert scores.verse_exact == 0 and scores.char_accuracy == 0
    assert scores.char_f1 == 1.0
    assert scores.edit_similarity == 0.0


def test_character_overlap_is_a_multiset():
    scores = content_scores(["山水水"], ["山山水"])
    assert scores.char_precision == scores.char_recall == pytest.approx(2 / 3)


def test_extra_verses_are_not_scored_for_content_but_fail_the_verse_count():
    predicted = [*GT, "欲窮千里目"]
    assert content_scores(predicted, GT) == content_scores(GT, GT)
    form = form_scores(predicted, GT)
    assert form.verse_count == 3 and form.verse_count_ok == 0.0 and form.lengths_ok == 1.0


def test_wrong_length_verse():
    form = form_scores(["白日依山盡", "黃河入海流水"], GT)
    assert form.verse_lengths == (5, 6) and form.expected_length == 5
    assert form.lengths_ok == 0.0 and form.length_ok_rate == 0.5 and form.verse_count_ok == 1.0


@pytest.mark.parametrize("a, b, distance", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                             ("白日", "日白", 2), ("山水", "山水", 0)])
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def _reference_levenshtein(a, b):
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[-1][-1]


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.text("山水花", max_size=12), st.text("山水花", max_size=12))
def test_levenshtein_matches_the_textbook_table(a, b):
    assert levenshtein(a, b) == _reference_levenshtein(a, b)
