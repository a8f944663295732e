"""A table of cells that Jupyter shows as Markdown and `print` shows as aligned text."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class Table:
    """Rows of cells shown as a Markdown table in Jupyter, as aligned text by print()."""

    columns: list[str]
    rows: list[list[Any]]

    @staticmethod
    def _text(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    def _repr_markdown_(self) -> str:
        def cell(value: Any) -> str:
            # Tokens such as <s> and </s> are text, not HTML tags (which Jupyter would drop), and * _ ` $ | stay
            # literal instead of starting emphasis, code, maths or a new column.
            text = html.escape(self._text(value), quote=False)
            return re.sub(r"([\\*_`$|])", r"\\\1", text).replace("\n", "<br>")

        lines = ["| " + " | ".join(cell(c) for c in self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        """Aligned columns; CJK characters count as two columns on a terminal."""
        import unicodedata

        def width(text: str) -> int:
            return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

        cells = [[self._text(v).replace("\n", " ") for v in row] for row in [self.columns, *self.rows]]
        widths = [max(width(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c + " " * (w - width(c)) for c, w in zip(row, widths)).rstrip() for row in cells)
