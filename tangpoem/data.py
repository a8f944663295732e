"""The course dataset: where it lives, fetching it (pinned commit, SHA-256 checked) and validating it.

Reading is strict: every problem that would stop training or generation later (a file that cannot be
read, a folder where the file should be, text that is not UTF-8, JSON nested too deeply, a field that
is not a string or holds half a character) is one InputError line naming the file, record and field,
so `tangpoem data check` finds it before a run does.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tangpoem.errors import InputError
from tangpoem.io import lone_surrogate_at, parse_json, umask_mode

TRAIN_FILE = "Tang_training_data.json"
TEST_FILE = "Tang_testing_data.json"
GT_FILE = "Tang_testing_gt.txt"

# The public course repository, pinned; the checksums are those of that commit's files.
SOURCE_REPO = "CheeEn-Yu/GenAI-Hw5"
SOURCE_COMMIT = "8775ee367e2997470b1794d48b6057b5a38c4e07"
SOURCE_URL = f"https://raw.githubusercontent.com/{SOURCE_REPO}/{SOURCE_COMMIT}"
SHA256 = {
    TRAIN_FILE: "b464f5acf5a0443f1cebb60604b4cc28dd4deb1d6e7edc1583283c1d9fc2783c",
    TEST_FILE: "965444e9f846112546f42540e95428bcf38bffb89dc6de89ff2444a3dae8526b",
    GT_FILE: "bd4b3a5239ef19a00d7f0b729a05b0f2d5c6dbb41e6a64e3c5d5dd11515faf27",
}
DEFAULT_DATA_DIR = Path("data/GenAI-Hw5")
MAX_TRAIN_ROWS = 5001


@dataclass(frozen=True)
class Row:
    """One course record: the instruction, the first couplet, and (training only) the rest of the poem."""

    instruction: str
    input: str
    output: str | None = None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Config/CLI value first, then $TANGPOEM_DATA_DIR, then data/GenAI-Hw5."""
    return Path(data_dir or os.environ.get("TANGPOEM_DATA_DIR") or DEFAULT_DATA_DIR)


def course_file(data_dir: str | os.PathLike | None, name: str) -> Path:
    """The path of one course file in the data folder; a data folder that is a file is refused."""
    folder = resolve_data_dir(data_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder; data_dir must be the folder holding "
                         f"{TRAIN_FILE}, {TEST_FILE} and {GT_FILE}")
    return folder / name


def _read_text(path: Path) -> str:
    """A course file's text (UTF-8, a BOM allowed); every way it can be unreadable is one line."""
    fix = "run `tangpoem data fetch`, or set data_dir"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found ({fix})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected the file itself ({fix})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e}); check that the file is readable") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8, "
                         "or fetch the course files again with `tangpoem data fetch`") from None


def _read_json_rows(path: Path, need_output: bool) -> list[Row]:
    records = parse_json(_read_text(path), str(path))
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    fields = ("instruction", "input", "output") if need_output else ("instruction", "input")
    rows = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}: record {index}: expected an object, got {type(record).__name__}")
        for name in fields:
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if name not in record else f"not a non-empty string ({_short_repr(value)})"
                raise InputError(f"{path}: record {index}: field '{name}' is {what}")
            if (at := lone_surrogate_at(value)) is not None:
                raise InputError(f"{path}: record {index}: field '{name}' holds a lone surrogate "
                                 f"(\\u{ord(value[at]):04x} at character {at}: half of a character, which no "
                                 "tokenizer can encode); fix or remove that escape")
        rows.append(Row(record["instruction"], record["input"], record.get("output") if need_output else None))
    if not rows:
        raise InputError(f"{path}: no records")
    return rows


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_train_rows(data_dir: str | os.PathLike | None = None, num_train_data: int | None = None) -> list[Row]:
    """The first `num_train_data` training rows, as the homework takes them."""
    rows = _read_json_rows(course_file(data_dir, TRAIN_FILE), need_output=True)
    return rows[:num_train_data] if num_train_data else rows


def load_test_rows(data_dir: str | os.PathLike | None = None) -> list[Row]:
    return _read_json_rows(course_file(data_dir, TEST_FILE), need_output=False)


def load_ground_truth(data_dir: str | os.PathLike | None = None) -> list[list[str]]:
    """Tang_testing_gt.txt: one line per test poem, verses separated by tabs."""
    path = course_file(data_dir, GT_FILE)
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    verses = []
    for number, line in enumerate(lines, start=1):
        parts = [v.strip() for v in line.split("\t")]
        if not line.strip() or not all(parts):
            raise InputError(f"{path}:{number}: empty line or empty verse")
        verses.append(parts)
    return verses


def check(data_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Validate the three files; return row counts. Raises InputError on the first problem."""
    train = load_train_rows(data_dir)
    test = load_test_rows(data_dir)
    gt = load_ground_truth(data_dir)
    if len(train) > MAX_TRAIN_ROWS:
        raise InputError(f"{resolve_data_dir(data_dir) / TRAIN_FILE}: {len(train)} records, the course has {MAX_TRAIN_ROWS}")
    if len(gt) != len(test):
        raise InputError(
            f"{resolve_data_dir(data_dir) / GT_FILE}: {len(gt)} lines, but {TEST_FILE} has {len(test)} records"
        )
    return {"train": len(train), "test": len(test), "gt": len(gt)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(data_dir: str | os.PathLike | None = None, base_url: str = SOURCE_URL, timeout: float = 60,
          keep_existing: bool = False) -> list[Path]:
    """Download the three course files from the pinned commit and verify their SHA-256.

    Each file is downloaded to a temp file beside its target and renamed only once its checksum
    matches, so a failed or corrupted download never leaves a partial file where it would be read.
    Files already present with the right checksum are kept; with `keep_existing`, every file already
    present is kept (only missing ones are downloaded; `check` reports a broken one).
    """
    target = resolve_data_dir(data_dir)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: is a file, not a folder; give the folder to download the course files into")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, expected in SHA256.items():
        path = target / name
        if path.is_file() and (keep_existing or sha256_of(path) == expected):
            written.append(path)
            continue
        url = f"{base_url}/{name}"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target)
        try:
            os.fchmod(fd, umask_mode())  # mkstemp's 0600 would keep others from reading the data
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while block := response.read(1 << 20):
                    out.write(block)
            actual = sha256_of(Path(tmp))
            if actual != expected:
                raise InputError(f"{url}: SHA-256 mismatch (expected {expected}, got {actual}); nothing written")
            os.replace(tmp, path)
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise InputError(f"{url}: download failed ({getattr(e, 'reason', e)})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        written.append(path)
    return written
