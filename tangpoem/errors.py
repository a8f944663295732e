"""The errors users see: one line each, never a traceback.

InputError: something the user gave us is wrong (a file, a record, a config key); exit status 2.
RunError: the run itself cannot go on (the disk is full, training diverged, the GPU ran out of memory);
exit status 1, with what was kept and what to change.
Messages that name a setting do so the way the user sets it (`setting()`): `--set key=value` on the
command line, `key = value` in a notebook.
"""

from __future__ import annotations

from typing import Any


class InputError(Exception):
    """A problem with something the user gave us (a file, a record, a config value).

    The message is one line that names the file, record or key and what is wrong;
    the CLI prints it without a traceback and exits with status 2.
    """

    exit_code = 2


class RunError(Exception):
    """The run stopped for a reason outside the input; the message says what was kept and what to do."""

    exit_code = 1


# Who reads the messages: "cli" (tangpoem ...) or "notebook" (set by the notebooks' config cell).
AUDIENCE = {"value": "cli"}


def speak_to(audience: str) -> None:
    if audience not in ("cli", "notebook"):
        raise ValueError(f"audience must be 'cli' or 'notebook', not {audience!r}")
    AUDIENCE["value"] = audience


def say(cli: str, notebook: str) -> str:
    """The same instruction, worded for whoever reads it: a command-line user or a notebook user."""
    return notebook if AUDIENCE["value"] == "notebook" else cli


def setting(key: str, value: Any) -> str:
    """How the reader sets `key` to `value`: `--set key=value` (CLI) or `key = value` (notebook knob)."""
    text = str(value).lower() if isinstance(value, bool) else value
    return say(f"`--set {key}={text}`", f"`{key} = {value!r}`")
