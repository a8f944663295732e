"""What a person sees while tangpoem runs: a live progress bar only where someone watches."""

from __future__ import annotations

import os
import sys


def interactive() -> bool:
    """A terminal, or a notebook run by hand. Not a papermill run (the runner sets TANGPOEM_HEADLESS: its saved
    outputs would hold every redraw of a bar), and not a kernel without ipywidgets (tqdm would print text)."""
    if os.environ.get("TANGPOEM_HEADLESS"):
        return False
    if "ipykernel" in sys.modules:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return False
        return True
    return sys.stderr.isatty()
