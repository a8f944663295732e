"""Files in and out: atomic writes (a reader never sees a half-written file: temp file + rename) whose
files and folders get the modes the umask gives, and JSON text read with every failure as one line.

tempfile.mkstemp and mkdtemp create 0600 files and 0700 folders whatever the umask, so a renamed temp
file would keep a TA or a web server from reading results and reports; here they get the mode a new
file from open() (0666 & ~umask) or folder from mkdir() (0777 & ~umask) would have.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tangpoem.errors import InputError


def current_umask() -> int:
    """The process umask. Linux shows it in /proc (reading it leaves it alone); elsewhere it is set and
    put back at once, which another thread creating a file at that instant could notice."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode open() (0666) or mkdir() (0777) gives a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory and os.replace."""
    return atomic_write_files({Path(path): data})[0]


def atomic_write_files(contents: dict[Path, bytes]) -> list[Path]:
    """Several files as one: every temp file is written first, then all are renamed into place; a failure
    while writing (a full disk) leaves every old file as it was."""
    written: list[tuple[str, Path]] = []
    try:
        for path, data in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            written.append((tmp, path))
            os.fchmod(fd, umask_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    for tmp, path in written:
        os.replace(tmp, path)
    return [path for _, path in written]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A folder filled in whole or not at all: yields a hidden temp folder beside `final` (named
    `.NAME.*.tmp`, mode as mkdir gives under the umask); on success it replaces `final` (an existing
    `final` is removed first), on any exception it is removed.

        with atomic_dir(output_dir / f"checkpoint-{step}") as tmp:
            model.save_pretrained(tmp)
    """
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        os.chmod(tmp, umask_mode(directory=True))
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_json(text: str, name: str) -> Any:
    """json.loads, with every way it can fail as one InputError line naming `name`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{name}: JSON nested too deeply to read (thousands of [ or {{ inside each other); "
                         "expected a flat list of records") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits; the message's advice is Python's
        raise InputError(f"{name}: not valid JSON ({str(exc).split(':')[0][:120]})") from None


def lone_surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (half of a UTF-16 pair, which a JSON escape such as
    \\ud800 can produce and which cannot be written as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def display_path(path: str | os.PathLike) -> str:
    """A path as one line of text that can always be printed and written as UTF-8: bytes of a file name
    that are not UTF-8 (Python keeps them as lone surrogates) and control characters such as a newline
    in a name are shown as \\xNN escapes."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)
