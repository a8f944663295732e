import pytest

from tangpoem.grade.normalize import (VARIANT_TABLE, fold_char, normalize_text, normalized_with_index,
                                      split_verses, strip_punctuation)


@pytest.mark.parametrize("variant, standard", sorted(VARIANT_TABLE.items()))
def test_each_variant_in_our_table_folds_with_its_standard_form(variant, standard):
    assert normalize_text(variant) == normalize_text(standard)
    assert normalize_text(variant) != variant or variant == standard


@pytest.mark.parametrize("a, b", [("爲", "為"), ("裏", "裡"), ("衆", "眾"), ("峯", "峰")])
def test_opencc_t2s_folds_common_variants(a, b):
    assert normalize_text(a) == normalize_text(b)


def test_opencc_alone_does_not_fold_jian_which_is_why_the_table_exists():
    import opencc

    t2s = opencc.OpenCC("t2s")
    assert t2s.convert("劒") != t2s.convert("劍")
    assert normalize_text("慨然撫長劒") == normalize_text("慨然撫長劍")


def test_punctuation_spaces_and_width_are_removed():
    assert normalize_text("雪霽，銀妝素。 桔高!映?瓊枝；「」《》、\t") == normalize_text("雪霽銀妝素桔高映瓊枝")
    assert normalize_text("ＡＢ１") == "AB1"  # NFKC folds full-width forms


def test_strip_punctuation_keeps_variants_as_written():
    assert strip_punctuation("慨然撫長劒，濟世豈邀名。") == "慨然撫長劒濟世豈邀名"


def test_fold_char_drops_punctuation():
    assert fold_char("，") == "" and fold_char(" ") == "" and fold_char("…") == ""


def test_normalized_with_index_maps_back_to_raw_offsets():
    pairs = normalized_with_index("雪，霽 銀")
    assert [c for c, _ in pairs] == [normalize_text(c) for c in "雪霽銀"]
    assert [i for _, i in pairs] == [0, 2, 4]


def test_split_verses_on_chinese_and_ascii_punctuation_spaces_and_tabs():
    assert split_verses("偕伴登山去，觀雪且賞桔。") == ["偕伴登山去", "觀雪且賞桔"]
    assert split_verses("甲乙,丙丁.戊己!庚辛?壬癸;子丑、寅卯 辰巳\t午未") == [
        "甲乙", "丙丁", "戊己", "庚辛", "壬癸", "子丑", "寅卯", "辰巳", "午未"]
    assert split_verses("") == [] and split_verses("，。") == []
