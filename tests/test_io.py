import os
import stat

import pytest

from tangpoem.errors import InputError
from tangpoem.io import (atomic_dir, atomic_write_bytes, atomic_write_json, current_umask, display_path,
                         lone_surrogate_at, parse_json, umask_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask
    assert umask_mode() == 0o666 & ~umask and umask_mode(directory=True) == 0o777 & ~umask


def test_atomic_writes_give_files_the_mode_open_would(tmp_path, umask):
    written = atomic_write_json(tmp_path / "new" / "results.json", {"a": 1})
    with open(tmp_path / "plain.txt", "w") as f:  # what a plain open() gives, for comparison
        f.write("x")
    assert mode_of(written) == mode_of(tmp_path / "plain.txt") == 0o666 & ~umask
    assert mode_of(tmp_path / "new") == 0o777 & ~umask
    os.chmod(written, 0o600)  # an older file, e.g. written before this fix: rewritten under the umask
    atomic_write_bytes(written, b"{}")
    assert mode_of(written) == 0o666 & ~umask
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["results.json"]  # no temp file left


def test_atomic_dir_is_renamed_into_place_with_the_umask_mode(tmp_path, umask):
    final = tmp_path / "checkpoint-10"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".checkpoint-10.") and tmp.name.endswith(".tmp")
        (tmp / "adapter_config.json").write_text("{}")
        assert not final.exists()  # nothing there until the folder is complete
    assert mode_of(final) == 0o777 & ~umask
    assert [p.name for p in final.iterdir()] == ["adapter_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-10"]


def test_atomic_dir_replaces_an_old_folder_and_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "checkpoint-10"
    final.mkdir()
    (final / "old.bin").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("half")
            raise OSError("disk full")
    assert [p.name for p in final.iterdir()] == ["new.bin"]  # the complete one is kept
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-10"]  # the temp folder is gone


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "x.json: JSON nested too deeply to read"),
    ("[" + "7" * 5000 + "]", "x.json: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    ('[{"a": }]', "x.json:1: not valid JSON (Expecting value)"),
])
def test_parse_json_failures_are_one_line(text, message):
    with pytest.raises(InputError) as e:
        parse_json(text, "x.json")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_lone_surrogates_and_undecodable_file_names():
    assert lone_surrogate_at("秦川雄帝宅") is None
    assert lone_surrogate_at("秦川\ud800宅") == 2
    assert lone_surrogate_at("😀") is None  # a whole astral character is fine
    name = os.fsdecode(b"/tmp/caf\xe9/results.txt")  # a Latin-1 folder name: a lone surrogate in Python
    assert display_path(name) == "/tmp/caf\\xe9/results.txt"
    display_path(name).encode("utf-8")  # printable and writable
    assert display_path("/tmp/a\nb\tc/詩 集/results.txt") == "/tmp/a\\nb\\tc/詩 集/results.txt"  # one line
