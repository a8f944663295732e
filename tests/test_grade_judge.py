"""The LLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/judge_server.py).

The server scores by rule (judge_server.rule_scores) from the poem it finds in the request, so the
expected scores are computed here from the same poem text; misbehaviour is chosen per poem.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import time

import pytest
from grade_helpers import FIXTURES, GT, TEST
from judge_server import JudgeServer, rule_scores

from tangpoem.grade import grade_predictions
from tangpoem.grade.cli import main
from tangpoem.grade.judge import CONTENT_PASS, FORMAT_PASS, FileJudgement, PoemVerdict, judge_file, marks_for
from tangpoem.grade.judge_client import JudgeError, parse_answer

ROOT = FIXTURES.parents[2]
SECRET = "sk-test-0123456789abcdefSECRET"
FIXTURE_POEMS = 3  # poems in tests/fixtures/grade/test.json


@pytest.fixture(autouse=True)
def no_real_key(monkeypatch):
    """A developer's own key must never reach the test server."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def server():
    with JudgeServer() as running:
        yield running


def free_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grade(capsys, tmp_path, url, *files, extra=()):
    """Run `tangpoem grade --json` with the judge; (exit code, JSON document, stderr)."""
    files = files or (FIXTURES / "perfect.txt",)
    code = main([*map(str, files), "--gt", str(GT), "--test", str(TEST), "--json", "--judge-url", url,
                 "--judge-model", "test-judge", "--judge-cache", str(tmp_path / "cache"), "--judge-retry-delay", "0.01",
                 *map(str, extra)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def verdicts(doc, file_index=0):
    return [poem["judge"] for poem in doc["files"][file_index]["poems"]]


def without_judge(doc):
    """The document with every judge field removed: what the deterministic grader alone gives."""
    doc = json.loads(json.dumps(doc))
    doc["summary"].pop("judge")
    for entry in doc["files"]:
        entry.pop("judge")
        for poem in entry["poems"]:
            poem.pop("judge")
    return doc


def plain_grade(capsys, *files):
    assert main([*map(str, files), "--gt", str(GT), "--test", str(TEST), "--json"]) in (0, 1)
    return without_judge(json.loads(capsys.readouterr().out))


# ---------------------------------------------------------------- bands and pass marks


@pytest.mark.parametrize("passing, marks", [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3), (7, 3),
                                            (8, 4), (9, 4), (10, 5), (11, 5), (15, 5)])
def test_marks_at_every_band_edge(passing, marks):
    assert marks_for(passing) == marks


@pytest.mark.parametrize("format_passing, content_passing", [(0, 15), (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 0)])
def test_file_marks_count_passing_poems(format_passing, content_passing):
    poems = 15
    verdicts = [PoemVerdict("judged", FORMAT_PASS if n < format_passing else FORMAT_PASS - 0.5,
                            CONTENT_PASS if n < content_passing else CONTENT_PASS - 0.5, "r") for n in range(poems)]
    judgement = FileJudgement("m", False, verdicts)
    assert (judgement.format_passing, judgement.content_passing) == (format_passing, content_passing)
    assert judgement.marks == marks_for(format_passing) + marks_for(content_passing)
    assert judgement.complete


def test_pass_marks_are_8_for_format_and_7_for_content():
    assert PoemVerdict("judged", 8, 7, "").passes_format and PoemVerdict("judged", 8, 7, "").passes_content
    assert not PoemVerdict("judged", 7.9, 6.9, "").passes_format
    assert not PoemVerdict("judged", 7.9, 6.9, "").passes_content
    failed = PoemVerdict("failed", None, None, "timeout")
    assert not failed.passes_format and not failed.passes_content


# ---------------------------------------------------------------- reading answers


@pytest.mark.parametrize("text", [
    '{"format_score": 8, "content_score": 7.5, "reason": "工整"}',
    'Sure! {"format_score": "8", "content_score": "7.5", "reason": "工整"} Anything else?',
    '```json\n{"format_score": 8, "content_score": 7.5, "reason": "工整"}\n```',
    'I weigh {curly} things first. {"format_score": 8.0, "content_score": "7.5 ", "reason": "工整"}',
])
def test_answers_with_extra_text_or_string_scores_are_read(text):
    answer = parse_answer(text)
    assert (answer.format_score, answer.content_score, answer.reason) == (8.0, 7.5, "工整")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("格律工整，語意通順，給九分。", "not JSON"),
    ('{"format_score": 8, "reason": "x"}', "no content_score"),
    ('{"format_score": 11, "content_score": 5}', "format_score 11 is outside 0-10"),
    ('{"format_score": 8, "content_score": -1}', "content_score -1 is outside 0-10"),
    ('{"format_score": "eight", "content_score": 5}', "format_score is not a number"),
    ('{"format_score": true, "content_score": 5}', "format_score is not a number"),
    ('{"format_score": "nan", "content_score": 5}', "format_score is not a number"),
    ('[8, 7]', "not JSON"),
])
def test_malformed_answers_are_refused_with_the_reason(text, message):
    with pytest.raises(JudgeError, match=message):
        parse_answer(text)


def test_a_missing_reason_is_not_a_failure():
    assert parse_answer('{"format_score": 9, "content_score": 9}').reason == "(no reason given)"


# ---------------------------------------------------------------- the CLI against the server


def test_every_poem_judged_by_the_rule_and_shown_in_all_reports(capsys, tmp_path, server):
    html, table = tmp_path / "report.html", tmp_path / "class.csv"
    code, doc, err = grade(capsys, tmp_path, server.url, FIXTURES / "perfect.txt",
                           extra=["--html", html, "--csv", table])
    assert code == 0 and err == ""
    assert doc["schema_version"] == 2 and server.count == FIXTURE_POEMS
    judged = verdicts(doc)
    for poem, verdict in zip(doc["files"][0]["poems"], judged):
        fmt, content, reason = rule_scores(poem["input"] + poem["prediction"])
        assert verdict == {"status": "judged", "format_score": fmt, "content_score": content, "reason": reason,
                           "passes_format": fmt >= FORMAT_PASS, "passes_content": content >= CONTENT_PASS,
                           "cached": False}
    summary = doc["files"][0]["judge"]
    format_passing = sum(v["passes_format"] for v in judged)
    content_passing = sum(v["passes_content"] for v in judged)
    assert summary["format"]["passing"] == format_passing and summary["content"]["passing"] == content_passing
    assert summary["marks"] == marks_for(format_passing) + marks_for(content_passing)
    assert summary["complete"] and summary["model"] == "test-judge" and summary["failed"] == 0
    assert doc["summary"]["judge"]["files"] == 1
    # the request: the rubric (the course's two questions) with the whole poem, and JSON mode
    request = server.requests[0]
    prompt = request["messages"][0]["content"]
    assert request["model"] == "test-judge" and request["response_format"] == {"type": "json_object"}
    assert "唐詩格律相似程度" in prompt and "語意通順程度" in prompt and "原作" not in prompt

    row = next(csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"))))
    assert row["judge_marks"] == str(summary["marks"]) and row["judge_complete"] == "true"
    assert row["judge_scores"] == " ".join(f"{v['format_score']:g}/{v['content_score']:g}" for v in judged)
    assert judged[0]["reason"] in row["judge_reasons"]
    page = html.read_text(encoding="utf-8")
    assert "LLM judge" in page and judged[1]["reason"] in page and "test-judge" in page
    assert page.count("<script>") == 1 and "http://" not in page  # still self-contained, the URL not shown


def test_text_report_shows_marks_and_a_line_per_poem(capsys, tmp_path, server):
    code = main([str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--judge-url", server.url,
                 "--judge-model", "test-judge", "--judge-cache", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0
    assert "judge test-judge: format " in out and "== judge" in out and "files judged by test-judge" in out
    rows = [line for line in out.splitlines() if line.rstrip().endswith("characters")]
    assert len(rows) == FIXTURE_POEMS  # one row per poem, with the judge's reason


def test_second_run_is_answered_from_the_cache(capsys, tmp_path, server):
    _, first, _ = grade(capsys, tmp_path, server.url)
    assert server.count == FIXTURE_POEMS
    _, second, _ = grade(capsys, tmp_path, server.url)
    assert server.count == FIXTURE_POEMS  # no request at all
    assert all(v["cached"] for v in verdicts(second))
    assert [{**v, "cached": False} for v in verdicts(second)] == verdicts(first)
    assert len(list((tmp_path / "cache").glob("*.json"))) == FIXTURE_POEMS
    # what the judge sees changes the key: the reference poem, another model
    grade(capsys, tmp_path, server.url, extra=["--judge-with-reference"])
    assert server.count == 2 * FIXTURE_POEMS and "原作" in server.requests[-1]["messages"][0]["content"]


def test_default_cache_is_under_xdg_cache_home(capsys, tmp_path, server, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main([str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--json",
                 "--judge-url", server.url, "--judge-model", "m"]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "xdg" / "tangpoem" / "judge").glob("*.json"))) == FIXTURE_POEMS


def test_copied_answers_are_asked_once_and_empty_ones_not_at_all(capsys, tmp_path, server):
    # results.json holds the same answers as perfect.txt; halfwidth_extra.txt lacks poem 3
    code, doc, _ = grade(capsys, tmp_path, server.url, FIXTURES / "perfect.txt", FIXTURES / "results.json",
                         FIXTURES / "halfwidth_extra.txt")
    assert code == 0
    assert verdicts(doc, 0) == verdicts(doc, 1)
    assert verdicts(doc, 2)[2] == {"status": "empty", "format_score": 0.0, "content_score": 0.0,
                                   "reason": "no continuation to judge: scored 0 without asking",
                                   "passes_format": False, "passes_content": False, "cached": False}
    assert server.count == FIXTURE_POEMS + 2  # perfect's 3, halfwidth's 2 different answers, no empty one


def test_a_timeout_fails_that_poem_only(capsys, tmp_path, server):
    server.rules["君問"] = "sleep"
    server.sleep_s = 1.5
    start = time.monotonic()
    code, doc, err = grade(capsys, tmp_path, server.url, extra=["--judge-timeout", "0.3", "--judge-tries", "2"])
    assert time.monotonic() - start < 5
    assert code == 0
    first, second, third = verdicts(doc)
    assert first["status"] == second["status"] == "judged"
    assert third == {"status": "failed", "format_score": None, "content_score": None,
                     "reason": "no answer within 0.3 s (2 tries)", "passes_format": False,
                     "passes_content": False, "cached": False}
    assert [n for poem, n in server.per_poem.items() if "君問" in poem] == [2]
    judge = doc["files"][0]["judge"]
    assert judge["failed"] == 1 and not judge["complete"]
    assert err.strip() == (f"judge: {FIXTURES / 'perfect.txt'}: 1 of 3 poems not judged "
                           "(poem 3: no answer within 0.3 s (2 tries))")
    assert without_judge(doc) == plain_grade(capsys, FIXTURES / "perfect.txt")


def test_malformed_answers_fail_their_poems_and_are_not_cached(capsys, tmp_path, server):
    server.rules.update({"雪霽": "not_json", "夫子": "missing", "君問": "out_of_range"})
    code, doc, err = grade(capsys, tmp_path, server.url)
    assert code == 0 and "3 of 3 poems not judged" in err
    reasons = [v["reason"] for v in verdicts(doc)]
    assert all(v["status"] == "failed" for v in verdicts(doc))
    assert reasons[0].startswith("the answer is not JSON: '這首詩寫得不錯")
    assert reasons[1] == "the answer has no content_score"
    assert reasons[2] == "format_score 12 is outside 0-10"
    assert server.count == FIXTURE_POEMS  # a reply that came back is not retried
    assert without_judge(doc) == plain_grade(capsys, FIXTURES / "perfect.txt")
    server.rules.clear()
    _, again, _ = grade(capsys, tmp_path, server.url)
    assert server.count == 2 * FIXTURE_POEMS and all(v["status"] == "judged" for v in verdicts(again))


def test_json_in_prose_with_string_scores_is_accepted(capsys, tmp_path, server):
    server.rules.update({"雪霽": "prose", "夫子": "prose", "君問": "prose"})
    _, doc, _ = grade(capsys, tmp_path, server.url)
    for poem, verdict in zip(doc["files"][0]["poems"], verdicts(doc)):
        assert (verdict["format_score"], verdict["content_score"]) == rule_scores(poem["input"] + poem["prediction"])[:2]


def test_a_reply_without_choices_fails_that_poem(capsys, tmp_path, server):
    server.rules["夫子"] = "no_choices"
    code, doc, _ = grade(capsys, tmp_path, server.url)
    assert code == 0 and verdicts(doc)[1]["status"] == "failed"
    assert "not a chat completion" in verdicts(doc)[1]["reason"]


def test_429_is_retried_with_backoff_until_it_succeeds(capsys, tmp_path, server):
    server.rules["夫子"] = "429_then_ok"
    server.failures_before_ok = 2
    server.retry_after = "0.2"  # the server's Retry-After is longer than our 0.01 s: it wins
    start = time.monotonic()
    code, doc, err = grade(capsys, tmp_path, server.url, extra=["--judge-tries", "4"])
    elapsed = time.monotonic() - start
    assert code == 0 and err == "" and all(v["status"] == "judged" for v in verdicts(doc))
    assert [n for poem, n in server.per_poem.items() if "夫子" in poem] == [3]  # 429, 429, answer
    assert 0.4 <= elapsed < 5


def test_429_for_ever_stops_after_the_tries(capsys, tmp_path, server):
    server.rules["夫子"] = "429"
    start = time.monotonic()
    code, doc, _ = grade(capsys, tmp_path, server.url, extra=["--judge-tries", "3", "--judge-retry-delay", "0.05"])
    elapsed = time.monotonic() - start
    assert code == 0
    assert verdicts(doc)[1]["reason"] == "HTTP 429 from the judge: rate limited, slow down (3 tries)"
    assert [n for poem, n in server.per_poem.items() if "夫子" in poem] == [3]
    assert 0.15 <= elapsed < 5  # waited 0.05 + 0.1 s between the three tries


def test_server_errors_are_retried_then_reported(capsys, tmp_path, server):
    server.rules["雪霽"] = "500"
    _, doc, _ = grade(capsys, tmp_path, server.url, extra=["--judge-tries", "2"])
    assert verdicts(doc)[0]["reason"] == "HTTP 500 from the judge: the model crashed (2 tries)"
    assert [v["status"] for v in verdicts(doc)] == ["failed", "judged", "judged"]


def test_a_server_that_refuses_json_mode_is_asked_in_plain_text(capsys, tmp_path, server):
    server.refuse_json_mode = True
    code, doc, _ = grade(capsys, tmp_path, server.url, extra=["--judge-workers", "1"])
    assert code == 0 and all(v["status"] == "judged" for v in verdicts(doc))
    asked_json = ["response_format" in body for body in server.requests]
    assert asked_json == [True, False, False, False]  # refused once, then plain text for every poem


def test_a_server_that_is_down_fails_every_poem_and_grading_completes(capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    html = tmp_path / "report.html"
    start = time.monotonic()
    code, doc, err = grade(capsys, tmp_path, url, FIXTURES / "perfect.txt", FIXTURES / "binary.txt",
                           extra=["--judge-tries", "2", "--html", html])
    assert time.monotonic() - start < 10
    assert code == 1  # the grader's own rule: binary.txt could not be graded; the judge does not change it
    for verdict in verdicts(doc):
        assert verdict["status"] == "failed"
        assert verdict["reason"].startswith(("cannot reach " + url, "not sent: the judge failed 3 poems in a row"))
    assert doc["files"][1]["judge"] is None  # an error row is not judged
    assert without_judge(doc) == plain_grade(capsys, FIXTURES / "perfect.txt", FIXTURES / "binary.txt")
    assert "judge: " in err and "3 of 3 poems not judged" in err
    assert "judge failed" in html.read_text(encoding="utf-8")


def test_after_three_dead_requests_in_a_row_the_rest_are_not_sent(tmp_path):
    """A dead server costs `tries` requests for 3 poems, not for every poem of the class (library call)."""
    couplets = ["床前明月光，疑是地上霜。", "白日依山盡，黃河入海流。", "春眠不覺曉，處處聞啼鳥。",
                "紅豆生南國，春來發幾枝。", "千山鳥飛絕，萬徑人蹤滅。"]
    gt_lines = ["舉頭望明月\t低頭思故鄉", "欲窮千里目\t更上一層樓", "夜來風雨聲\t花落知多少", "願君多采擷\t此物最相思",
                "孤舟蓑笠翁\t獨釣寒江雪"]
    rows = [{"instruction": "以下是一首唐詩的第一句話，請用你的知識判斷並完成整首詩。", "input": c} for c in couplets]
    result = grade_predictions(["，".join(line.split("\t")) + "。" for line in gt_lines], gt_lines, rows)
    judgement = judge_file(result, f"http://127.0.0.1:{free_port()}/v1", "m", cache_dir=tmp_path, tries=2,
                           retry_delay=0.01, workers=1)
    reasons = [v.reason for v in judgement.verdicts]
    assert all(r.startswith("cannot reach") and "(2 tries)" in r for r in reasons[:3])
    assert all(r.startswith("not sent: the judge failed 3 poems in a row (last: cannot reach") for r in reasons[3:])
    assert judgement.failed == 5 and judgement.marks == 0 and not judgement.complete
    assert [p.judge for p in result.poems] == judgement.verdicts


def test_judge_file_on_in_memory_predictions(tmp_path, server):
    rows = json.loads(TEST.read_text(encoding="utf-8"))
    gt_lines = GT.read_text(encoding="utf-8").splitlines()
    result = grade_predictions(["偕伴登山去，觀雪且賞桔。", "", "何當共剪西窗燭，卻話巴山夜雨時。"], gt_lines, rows)
    judgement = judge_file(result, server.url, "m", cache_dir=tmp_path)
    assert [v.status for v in judgement.verdicts] == ["judged", "empty", "judged"]
    assert judgement.verdicts[0].format_score == rule_scores("雪霽銀妝素，桔高映瓊枝。偕伴登山去，觀雪且賞桔。")[0]
    assert server.count == 2


def test_the_judges_reason_is_escaped_in_html(capsys, tmp_path, server):
    server.rules["雪霽"] = "html_reason"
    html = tmp_path / "report.html"
    grade(capsys, tmp_path, server.url, extra=["--html", html])
    page = html.read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=&#34;document.title=&#39;HACKED&#39;&#34;&gt;" in page and "<img" not in page


@pytest.mark.slow
def test_judged_report_renders_in_chromium(capsys, tmp_path, server):
    assert shutil.which("chromium") or shutil.which("chromium-browser"), "install chromium (apt-get install -y chromium)"
    server.rules.update({"雪霽": "html_reason", "君問": "not_json"})
    html, png, dom = tmp_path / "report.html", tmp_path / "report.png", tmp_path / "dom.html"
    grade(capsys, tmp_path, server.url, extra=["--html", html])
    subprocess.run(["bash", str(ROOT / "scripts" / "screenshot_report.sh"), str(html), str(png), str(dom)],
                   check=True, timeout=120, capture_output=True)
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 50_000
    rendered = dom.read_text(encoding="utf-8")
    assert "<title>Tang poem grading report</title>" in rendered and "<img" not in rendered  # reason stayed text
    assert "LLM judge" in rendered and "judge: no score (the answer is not JSON" in rendered


# ---------------------------------------------------------------- the API key


def test_the_api_key_is_sent_but_never_printed_or_written(capsys, tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.rules["雪霽"] = "echo_auth"  # a 401 whose message quotes the key back
    html, table = tmp_path / "report.html", tmp_path / "class.csv"
    code, doc, err = grade(capsys, tmp_path, server.url, extra=["--html", html, "--csv", table])
    assert code == 0
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert verdicts(doc)[0]["reason"] == "HTTP 401 from the judge: invalid key: Bearer ***"
    written = [json.dumps(doc), err, html.read_text(encoding="utf-8"), table.read_text(encoding="utf-8"),
               *(path.read_text(encoding="utf-8") for path in (tmp_path / "cache").glob("*.json"))]
    assert len(written) == 4 + 2  # JSON, stderr, HTML, CSV and the two judged poems' cache files
    assert not any(SECRET in text for text in written)


def test_a_named_key_variable_is_used_and_must_be_set(capsys, tmp_path, server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    grade(capsys, tmp_path, server.url, extra=["--judge-api-key-env", "MY_JUDGE_KEY"])
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    monkeypatch.delenv("MY_JUDGE_KEY")
    code = main([str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), "--judge-url", server.url,
                 "--judge-model", "m", "--judge-api-key-env", "MY_JUDGE_KEY"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: judge: environment variable MY_JUDGE_KEY (--judge-api-key-env) is not set\n"


@pytest.mark.parametrize("flags", [["--judge-url", "http://127.0.0.1:9/v1"], ["--judge-model", "m"],
                                   ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--judge-tries", "0"]])
def test_incomplete_judge_flags_exit_2_with_one_line(capsys, flags):
    assert main([str(FIXTURES / "perfect.txt"), "--gt", str(GT), "--test", str(TEST), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: judge: ") and err.count("\n") == 1
