"""Writes the README's generated blocks from their one source: the config key table from the fields' help
(tangpoem.config); the notebooks table (the notebooks' titles, Colab links) and the install line from
tangpoem.resources.REPO_URL. Everything outside the blocks is written by hand and left alone.

    python scripts/build_readme.py           # rewrite README.md
    python scripts/build_readme.py --check   # exit 1 if README.md is out of date (tests/test_readme.py)

A block is the text between `<!-- begin NAME (scripts/build_readme.py) -->` and `<!-- end NAME -->`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

from tangpoem.config import FIELDS, SECTIONS, Config, keys_of
from tangpoem.resources import NOTEBOOK_GLOB, REPO_URL, colab_badge

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_keys() -> list[str]:
    """One row per key, by section: the key, its default (what a run without a config file uses), its help."""
    defaults = Config()
    rows = ["| section | key | default | what it sets |", "| --- | --- | --- | --- |"]
    for section in SECTIONS:
        for i, key in enumerate(keys_of(section)):
            value = getattr(defaults, key)
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, str)) or value is None else str(value)
            rows.append(f"| {'' if i else section} | `{key}` | `{_cell(shown)}` | {_cell(FIELDS[key].metadata['help'])} |")
    return rows


def notebooks() -> list[str]:
    """One row per teaching notebook: its title (the first heading) and its Colab badge."""
    rows = ["| notebook | open in Colab |", "| --- | --- |"]
    for path in sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB)):
        first = nbformat.read(path, as_version=4).cells[0].source
        title = re.sub(r"^#\s*\d+\s*·\s*", "", first.splitlines()[0]).strip()
        rows.append(f"| `{path.name}`: {_cell(title)} | {colab_badge(path.name)} |")
    return rows


def install() -> list[str]:
    return ["```bash", f'pip install "tangpoem[notebooks] @ git+{REPO_URL}"', "```"]


BLOCKS = {"install": install, "config keys": config_keys, "notebooks": notebooks}


def render(text: str) -> str:
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- begin {re.escape(name)} \(scripts/build_readme.py\) -->\n).*?(<!-- end {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md: the block '{name}' is missing; add its begin and end markers")
        text = pattern.sub(lambda m: m.group(1) + "\n".join(build()) + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not what this script writes")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md is out of date: run python scripts/build_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
