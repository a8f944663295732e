import functools
import http.server
import json
import shutil
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
