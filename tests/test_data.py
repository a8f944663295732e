import functools
import http.server
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from tangpoem import data
from tangpoem.errors import InputError


def test_course_files_load_and_check(course_dir):
    assert data.check(course_dir) == {"train": 5001, "test": 15, "gt": 15}
    rows = data.load_train_rows(course_dir, 1040)
    assert len(rows) == 1040 and rows[0].input == "秦川雄帝宅，函谷壯皇居。"
    assert rows[0].output.startswith("綺殿千尋起")
    assert data.load_test_rows(course_dir)[0].output is None
    assert data.load_ground_truth(course_dir)[0] == ["偕伴登山去", "觀雪且賞桔"]


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("TANGPOEM_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir("/explicit") == Path("/explicit")
    monkeypatch.delenv("TANGPOEM_DATA_DIR")
    assert data.resolve_data_dir() == Path("data/GenAI-Hw5")


def _copy_course(course_dir: Path, target: Path) -> Path:
    target.mkdir()
    for name in (data.TRAIN_FILE, data.TEST_FILE, data.GT_FILE):
        shutil.copy(course_dir / name, target / name)
    return target


@pytest.mark.parametrize(
    "record, message",
    [
        ("not an object", "record 2: expected an object, got str"),
        ({"instruction": "x", "input": "y"}, "record 2: field 'output' is missing"),
        ({"instruction": "x", "input": "", "output": "z"}, "record 2: field 'input' is not a non-empty string ('')"),
        ({"instruction": 3, "input": "y", "output": "z"}, "record 2: field 'instruction' is not a non-empty string (3)"),
    ],
)
def test_broken_training_record_is_named(course_dir, tmp_path, record, message):
    d = _copy_course(course_dir, tmp_path / "c")
    rows = json.loads((d / data.TRAIN_FILE).read_text(encoding="utf-8"))
    rows[2] = record
    (d / data.TRAIN_FILE).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value) == f"{d / data.TRAIN_FILE}: {message}"


def test_broken_json_and_missing_files(course_dir, tmp_path):
    d = _copy_course(course_dir, tmp_path / "c")
    (d / data.TEST_FILE).write_text('[{"instruction": "a",\n "input": }]', encoding="utf-8")
    with pytest.raises(InputError, match=r"Tang_testing_data.json:2: not valid JSON"):
        data.check(d)
    (d / data.TEST_FILE).unlink()
    with pytest.raises(InputError, match=r"Tang_testing_data.json: file not found"):
        data.check(d)


def test_gt_must_match_test_rows(course_dir, tmp_path):
    d = _copy_course(course_dir, tmp_path / "c")
    lines = (d / data.GT_FILE).read_text(encoding="utf-8").splitlines()
    (d / data.GT_FILE).write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="14 lines, but Tang_testing_data.json has 15 records"):
        data.check(d)
    (d / data.GT_FILE).write_text("\n".join(lines[:3] + ["a\t\tb"] + lines[4:]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"Tang_testing_gt.txt:4: empty line or empty verse"):
        data.check(d)


@pytest.fixture
def http_server():
    """Serve a directory on 127.0.0.1 (the only network the tests use)."""
    servers = []

    def serve(directory: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()


def test_fetch_verifies_checksums(course_dir, tmp_path, http_server):
    url = http_server(course_dir)
    target = tmp_path / "fetched"
    paths = data.fetch(target, base_url=url)
    assert sorted(p.name for p in paths) == sorted(data.SHA256)
    for name in data.SHA256:
        assert (target / name).read_bytes() == (course_dir / name).read_bytes()
    assert sorted(p.name for p in target.iterdir()) == sorted(data.SHA256)  # no temp files left


def test_fetch_keep_existing_downloads_only_what_is_missing(course_dir, tmp_path, http_server):
    """The notebooks' way: a file that is there is never replaced, even one whose checksum differs."""
    target = _copy_course(course_dir, tmp_path / "local")
    (target / data.GT_FILE).unlink()
    edited = (target / data.TEST_FILE).read_text(encoding="utf-8") + "\n"
    (target / data.TEST_FILE).write_text(edited, encoding="utf-8")
    data.fetch(target, base_url=http_server(course_dir), keep_existing=True)
    assert (target / data.GT_FILE).read_bytes() == (course_dir / data.GT_FILE).read_bytes()
    assert (target / data.TEST_FILE).read_text(encoding="utf-8") == edited
    data.fetch(target, base_url=http_server(course_dir))  # without it, the edited file is replaced
    assert (target / data.TEST_FILE).read_bytes() == (course_dir / data.TEST_FILE).read_bytes()


def test_fetch_refuses_a_corrupted_file_and_leaves_nothing(course_dir, tmp_path, http_server):
    served = _copy_course(course_dir, tmp_path / "served")
    with open(served / data.TRAIN_FILE, "r+b") as f:  # one byte changed
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    target = tmp_path / "fetched"
    with pytest.raises(InputError, match=r"Tang_training_data.json: SHA-256 mismatch .*nothing written"):
        data.fetch(target, base_url=http_server(served))
    assert not (target / data.TRAIN_FILE).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no partial download left


def test_fetch_reports_an_unreachable_server(tmp_path, http_server):
    url = http_server(tmp_path)  # serves an empty directory: 404 for every file
    with pytest.raises(InputError, match=r"download failed"):
        data.fetch(tmp_path / "fetched", base_url=url)
    assert list((tmp_path / "fetched").iterdir()) == []


# ---------------------------------------------------------------- files that would stop a run later


def _write_rows(path: Path, rows) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=True), encoding="utf-8")  # ASCII: lone surrogates as \ud800


@pytest.mark.parametrize("name, field", [(data.TRAIN_FILE, "instruction"), (data.TRAIN_FILE, "input"),
                                         (data.TRAIN_FILE, "output"), (data.TEST_FILE, "instruction"),
                                         (data.TEST_FILE, "input")])
def test_a_lone_surrogate_in_any_field_is_named(course_dir, tmp_path, name, field):
    """`data check` passed these and `train` crashed in the tokenizer."""
    d = _copy_course(course_dir, tmp_path / "c")
    rows = json.loads((d / name).read_text(encoding="utf-8"))
    rows[3][field] = rows[3][field][:4] + "\udc80" + rows[3][field][4:]
    _write_rows(d / name, rows)
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value) == (f"{d / name}: record 3: field '{field}' holds a lone surrogate (\\udc80 at character 4: "
                            "half of a character, which no tokenizer can encode); fix or remove that escape")


@pytest.mark.parametrize("name", [data.TRAIN_FILE, data.TEST_FILE])
def test_json_nested_200000_deep_is_one_line(course_dir, tmp_path, name):
    d = _copy_course(course_dir, tmp_path / "c")
    (d / name).write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value).startswith(f"{d / name}: JSON nested too deeply to read")


@pytest.mark.parametrize("name", [data.TRAIN_FILE, data.TEST_FILE, data.GT_FILE])
def test_a_file_not_in_utf8_is_named_with_its_line(course_dir, tmp_path, name):
    d = _copy_course(course_dir, tmp_path / "c")
    text = (d / name).read_text(encoding="utf-8")
    (d / name).write_bytes(text.encode("big5", "replace"))  # a traditional-Chinese editor's other encoding
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value).startswith(f"{d / name}:")
    assert "not UTF-8 text" in str(e.value) and "save it as UTF-8" in str(e.value)


@pytest.mark.parametrize("name", [data.TRAIN_FILE, data.TEST_FILE, data.GT_FILE])
def test_a_directory_or_an_unreadable_entry_where_a_file_should_be(course_dir, tmp_path, name):
    d = _copy_course(course_dir, tmp_path / "c")
    (d / name).unlink()
    (d / name).mkdir()
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value) == f"{d / name}: is a directory, expected the file itself (run `tangpoem data fetch`, or set data_dir)"
    (d / name).rmdir()
    (d / name).symlink_to(d / name)  # open() fails even for root: too many levels of symbolic links
    with pytest.raises(InputError) as e:
        data.check(d)
    assert str(e.value) == (f"{d / name}: cannot read (Too many levels of symbolic links); "
                            "check that the file is readable")


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("x")
    with pytest.raises(InputError, match=r"data: is a file, not a folder; data_dir must be the folder holding"):
        data.check(not_a_dir)
    with pytest.raises(InputError, match=r"data: is a file, not a folder; give the folder"):
        data.fetch(not_a_dir, base_url="http://127.0.0.1:9")


def test_fetched_files_follow_the_umask(course_dir, tmp_path, http_server):
    old = os.umask(0o022)
    try:
        for path in data.fetch(tmp_path / "fetched", base_url=http_server(course_dir)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
