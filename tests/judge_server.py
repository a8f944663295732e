"""A small OpenAI-compatible chat server for the judge tests, on 127.0.0.1 only.

It speaks the real protocol (POST /v1/chat/completions, a chat.completion object back) and scores
the poem it finds in the prompt by rule (`rule_scores`), so tests can tell what the judge saw.
Per-poem misbehaviour is chosen by substring: `server.rules["君問"] = "not_json"`.

By hand, for trying `tangpoem grade --judge-url http://127.0.0.1:PORT/v1 --judge-model test`:
    python tests/judge_server.py --port 8765
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POEM_MARK = "詩："  # the rubric's line before the poem (templates/judge_rubric.j2)
BEHAVIOURS = ("ok", "sleep", "not_json", "missing", "out_of_range", "prose", "429_then_ok", "429", "500",
              "echo_auth", "no_choices", "html_reason")


def poem_in(prompt: str) -> str:
    """The poem line of the rubric: the line after POEM_MARK."""
    lines = prompt.splitlines()
    for number, line in enumerate(lines[:-1]):
        if line.strip() == POEM_MARK:
            return lines[number + 1].strip()
    return ""


def rule_scores(poem: str) -> tuple[int, int, str]:
    """(format, content, reason) by rule: even verse count of one length -> 9 else 3; few repeats -> 8 else 4."""
    verses = [v for v in re.split(r"[，。？！；,.?!;\s]+", poem) if v]
    lengths = sorted({len(v) for v in verses})
    regular = bool(verses) and len(verses) % 2 == 0 and len(lengths) == 1
    chars = "".join(verses)
    varied = bool(chars) and len(set(chars)) / len(chars) > 0.7
    return (9 if regular else 3), (8 if varied else 4), f"{len(verses)} verses of {lengths} characters"


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.rules: dict[str, str] = {}      # substring of the poem -> behaviour
        self.sleep_s = 2.0                   # for "sleep"
        self.failures_before_ok = 2          # for "429_then_ok": per poem
        self.refuse_json_mode = False        # answer 400 to requests with response_format
        self.retry_after: str | None = None  # Retry-After header on 429 answers
        self.requests: list[dict] = []       # every request body, in arrival order
        self.auth_headers: list[str] = []
        self.per_poem: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    def behaviour(self, poem: str) -> str:
        return next((b for key, b in self.rules.items() if key in poem), "ok")

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up is expected here, not a traceback

    def __enter__(self) -> JudgeServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: JudgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": "test_error", "code": status}}, headers)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        server = self.server
        prompt = body["messages"][-1]["content"] if body.get("messages") else ""
        poem = poem_in(prompt)
        with server._lock:
            server.requests.append(body)
            server.auth_headers.append(self.headers.get("Authorization", ""))
            server.per_poem[poem] += 1
            seen = server.per_poem[poem]
        if self.path != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if server.refuse_json_mode and "response_format" in body:
            return self._error(400, "response_format is not supported by this server")
        behaviour = server.behaviour(poem)
        if behaviour == "sleep":
            time.sleep(server.sleep_s)
        if behaviour == "429" or (behaviour == "429_then_ok" and seen <= server.failures_before_ok):
            return self._error(429, "rate limited, slow down",
                               {"Retry-After": server.retry_after} if server.retry_after else None)
        if behaviour == "500":
            return self._error(500, "the model crashed")
        if behaviour == "echo_auth":  # a careless server that quotes the request's key back
            return self._error(401, f"invalid key: {self.headers.get('Authorization', '')}")
        if behaviour == "no_choices":
            return self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"]})
        self._send(200, _completion(body["model"], _answer(behaviour, poem)))


def _answer(behaviour: str, poem: str) -> str:
    fmt, content, reason = rule_scores(poem)
    if behaviour == "not_json":
        return "這首詩寫得不錯，格律大致工整。"
    if behaviour == "missing":
        return json.dumps({"format_score": fmt, "reason": reason}, ensure_ascii=False)
    if behaviour == "out_of_range":
        return json.dumps({"format_score": 12, "content_score": content, "reason": reason}, ensure_ascii=False)
    if behaviour == "html_reason":  # a reply is untrusted text too
        reason = '<img src=x onerror="document.title=\'HACKED\'">'
    if behaviour == "prose":  # JSON inside prose and a fence, scores as strings
        fields = json.dumps({"format_score": str(fmt), "content_score": str(content), "reason": reason},
                            ensure_ascii=False)
        return f"Here is my grading:\n```json\n{fields}\n```\nHope this helps."
    return json.dumps({"format_score": fmt, "content_score": content, "reason": reason}, ensure_ascii=False)


def _completion(model: str, text: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rule", action="append", default=[], metavar="SUBSTRING=BEHAVIOUR",
                        help=f"misbehave for poems containing SUBSTRING; one of {', '.join(BEHAVIOURS)}")
    args = parser.parse_args()
    server = JudgeServer(args.port)
    server.rules = dict(rule.split("=", 1) for rule in args.rule)
    print(f"judge test server on {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()
