import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from forms import count_accuracy, form_mix, majority_count_by_length, poem_form  # noqa: E402  (scripts/forms.py: only the nano study uses it)


def test_poem_form_reads_punctuated_text_and_gt_lines():
    assert poem_form("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。") == (5, 4)
    assert poem_form("地猶鄹氏邑\t宅即魯王宮") == (5, 2)
    assert poem_form("") == (0, 0)


def test_form_mix_counts_most_common_first():
    assert form_mix([(5, 8), (7, 4), (5, 8)]) == {"5x8": 2, "7x4": 1}


def test_the_couplet_only_ceiling_is_the_majority_count_per_length():
    forms = [(5, 8)] * 6 + [(5, 4)] * 2 + [(7, 4)] * 3 + [(7, 8)] * 1
    rule = majority_count_by_length(forms)
    assert rule == {5: 8, 7: 4}
    assert count_accuracy(rule, forms) == 9 / 12
    # No rule on verse length does better on these poems: each length's best is its majority.
    assert count_accuracy({5: 4, 7: 4}, forms) < 9 / 12 and count_accuracy({5: 8, 7: 8}, forms) < 9 / 12
    assert count_accuracy(rule, []) == 0.0
