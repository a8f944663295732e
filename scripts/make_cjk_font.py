"""Build tangpoem's CJK font for figures: a subset of Noto Sans CJK TC (SIL OFL 1.1), renamed.

Matplotlib has no CJK font of its own and Colab installs none, so the figures' Chinese labels showed as
boxes. tangpoem ships this subset (tangpoem/fonts/) and registers it by path (tangpoem.plots), so
neither the machine's fonts nor a stale font cache matter. Run it again when the characters it must
cover change (the corpus, the prompt, the notebooks' labels); tests/test_plots.py checks the coverage.

How it was made, exactly (Debian 12's package, the same font files as googlefonts/noto-cjk 2.004):

    apt-get download fonts-noto-cjk                 # fonts-noto-cjk_1%3a20220127+repack1-1_all.deb
    dpkg-deb -x fonts-noto-cjk_*_all.deb /tmp/noto
    PYTHONPATH=$PWD python scripts/make_cjk_font.py \\
        --ttc /tmp/noto/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc \\
        --copyright /tmp/noto/usr/share/doc/fonts-noto-cjk/copyright \\
        --corpus /work/shared/data/quan-tang-shi/tang_poems.jsonl --data-dir /work/shared/data/GenAI-Hw5

Characters kept: every character of the 全唐詩 corpus and of the course files, of the prompt and of the
files that hold the figures' and notebooks' labels; ASCII, Latin-1, general punctuation, arrows, block
elements (sentencepiece's ▁), CJK and full-width punctuation; and the commonly used characters of Big5
(level 1, traditional) and GB2312 (level 1, simplified), so that a 7B model's next-token candidates
draw too. Hints are dropped (FreeType hints itself) to keep the file small. Characters the source font
lacks (private-use code points in the corpus) are reported and skipped: matplotlib then falls back to
DejaVu Sans, which warns only for a character neither font has. Only the horizontal layout features are
kept (no locale variants, no vertical forms): 2.8 MB instead of 5.6 MB.

The OFL lets anyone use, modify and redistribute the font, with its licence, under a name that is not a
Reserved Font Name ("Source", for Adobe's Source Han Sans, of which Noto Sans CJK is a copy). "Noto" is
a Google trademark, so the subset is renamed "Tangpoem Sans CJK".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tangpoem" / "fonts"
FONT_FILE = "TangpoemSansCJK-Regular.otf"
FAMILY = "Tangpoem Sans CJK"
POSTSCRIPT = "TangpoemSansCJK-Regular"
SOURCE_FAMILY = "Noto Sans CJK TC"  # the collection's traditional-Chinese face
LABEL_FILES = ("tangpoem/plots.py", "tangpoem/lessons.py", "tangpoem/prompt.py", "tangpoem/table.py",
               "tangpoem/grade/course.py", "scripts/build_notebooks.py")
COURSE_FILES = ("Tang_training_data.json", "Tang_testing_data.json", "Tang_testing_gt.txt")
RANGES = ((0x20, 0x7E), (0xA0, 0xFF), (0x2000, 0x206F), (0x2190, 0x21FF), (0x2500, 0x259F), (0x25A0, 0x25FF),
          (0x3000, 0x303F), (0xFF00, 0xFFEF))


def double_byte(codec: str, leads: range, trails: list[int]) -> set[str]:
    """Every character a double-byte codec maps from these lead and trail bytes."""
    found = set()
    for lead in leads:
        for trail in trails:
            try:
                found.add(bytes([lead, trail]).decode(codec))
            except UnicodeDecodeError:
                pass
    return found


def common_hanzi() -> set[str]:
    big5_level1 = double_byte("big5", range(0xA4, 0xC7), [*range(0x40, 0x7F), *range(0xA1, 0xFF)])
    gb2312_level1 = double_byte("gb2312", range(0xB0, 0xD8), list(range(0xA1, 0xFF)))
    return big5_level1 | gb2312_level1


def wanted_characters(corpus: Path, data_dir: Path) -> set[str]:
    chars: set[str] = set()
    with corpus.open(encoding="utf-8") as lines:
        for line in lines:
            chars.update(line)
    for name in COURSE_FILES:
        chars.update((data_dir / name).read_text(encoding="utf-8"))
    for name in LABEL_FILES:
        chars.update((REPO / name).read_text(encoding="utf-8"))
    for low, high in RANGES:
        chars.update(map(chr, range(low, high + 1)))
    chars |= common_hanzi()
    return {c for c in chars if c.isprintable() or c == " "}


def source_font(ttc: Path):
    from fontTools.ttLib import TTCollection

    for font in TTCollection(str(ttc)).fonts:
        if font["name"].getDebugName(1) == SOURCE_FAMILY:
            return font
    raise SystemExit(f"{ttc}: no face named {SOURCE_FAMILY!r}")


def rename(font, description: str) -> None:
    """The subset's own names in the name table and the CFF table (OFL: not the original's name)."""
    names = {1: FAMILY, 3: f"2.004;TANGPOEM;{POSTSCRIPT}", 4: f"{FAMILY} Regular", 6: POSTSCRIPT, 10: description,
             16: FAMILY, 17: "Regular"}
    table = font["name"]
    for record in list(table.names):
        if record.nameID in names or record.nameID in (18, 21, 22):
            table.removeNames(nameID=record.nameID)
    for name_id, text in names.items():
        table.setName(text, name_id, 3, 1, 0x409)  # Windows, Unicode BMP, English
        table.setName(text, name_id, 1, 0, 0)  # Mac, Roman, English
    cff = font["CFF "].cff
    cff.fontNames = [POSTSCRIPT]
    top = cff.topDictIndex[0]
    top.FullName, top.FamilyName = f"{FAMILY} Regular", FAMILY


def ofl_text(copyright_file: Path) -> str:
    """The SIL OFL 1.1 stanza of Debian's copyright file, unindented, under the upstream copyright line."""
    stanza = copyright_file.read_text(encoding="utf-8").split("License: SIL-1.1\n", 2)[-1].split("\nLicense:", 1)[0]
    body = "\n".join("" if line.strip() == "." else line[1:] for line in stanza.splitlines())
    return ("Copyright 2014-2021 Adobe (http://www.adobe.com/), with Reserved Font Name 'Source'.\n\n"
            "tangpoem/fonts/TangpoemSansCJK-Regular.otf is a Modified Version (a subset, renamed) of\n"
            "Noto Sans CJK TC Regular 2.004; see SOURCE.md beside this file.\n\n" + body.strip() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttc", type=Path, required=True, help="NotoSansCJK-Regular.ttc from fonts-noto-cjk")
    parser.add_argument("--copyright", type=Path, required=True, help="the package's usr/share/doc/fonts-noto-cjk/copyright")
    parser.add_argument("--corpus", type=Path, required=True, help="全唐詩 as JSON lines")
    parser.add_argument("--data-dir", type=Path, required=True, help="the course files (Tang_training_data.json ...)")
    args = parser.parse_args()
    from fontTools import subset

    font = source_font(args.ttc)
    cmap = font.getBestCmap()
    wanted = wanted_characters(args.corpus, args.data_dir)
    kept = sorted(ord(c) for c in wanted if ord(c) in cmap)
    missing = sorted(c for c in wanted if ord(c) not in cmap)
    options = subset.Options()
    options.hinting = False  # FreeType hints the outlines itself; the hints were half the size
    # Horizontal text only, in one locale: without `locl`/`vert` the Japanese, Korean and Simplified variants and
    # the vertical forms they reach are dropped (they doubled the file).
    options.layout_features = ["ccmp", "kern", "liga", "calt"]
    options.name_IDs = ["*"]
    options.name_languages = [0x409, 0]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=kept)
    subsetter.subset(font)
    digest = hashlib.sha256(args.ttc.read_bytes()).hexdigest()
    rename(font, f"Subset of {SOURCE_FAMILY} 2.004 (Debian fonts-noto-cjk 1:20220127+repack1-1) for tangpoem's figures")
    buffer = io.BytesIO()
    font.save(buffer)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / FONT_FILE).write_bytes(buffer.getvalue())
    (OUT_DIR / "OFL.txt").write_text(ofl_text(args.copyright), encoding="utf-8")
    hanzi = sum(bool(re.match(r"[\u3400-\u9fff\U00020000-\U0003ffff]", chr(c))) for c in kept)
    (OUT_DIR / "SOURCE.md").write_text(
        f"# {FONT_FILE}\n\n"
        f"A subset of {SOURCE_FAMILY} Regular 2.004, renamed \"{FAMILY}\", under the SIL Open Font License 1.1\n"
        f"(OFL.txt). Made by `scripts/make_cjk_font.py` (its docstring gives the exact commands) from\n"
        f"`NotoSansCJK-Regular.ttc` of Debian's fonts-noto-cjk 1:20220127+repack1-1 (sha256 {digest}).\n\n"
        f"{len(kept):,} characters ({hanzi:,} Han): the 全唐詩 corpus, the course files, the prompt, the figures' and\n"
        f"notebooks' labels, punctuation, and the common characters of Big5 and GB2312. Hints dropped.\n",
        encoding="utf-8")
    print(json.dumps({"font": str(OUT_DIR / FONT_FILE), "bytes": len(buffer.getvalue()), "characters": len(kept),
                      "han": hanzi, "missing_from_source": len(missing),
                      "missing_sample": "".join(missing[:20])}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
