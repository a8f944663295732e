"""One question to the LLM judge: the rubric rendered, the answer cached, retried and read.

`JudgeClient.ask(couplet, continuation, reference)` returns an `Answer` (format and content score,
0-10, and a short reason) or raises `JudgeError` with one line saying why there is none. It speaks
the OpenAI chat-completions protocol through the official `openai` client, so any compatible server
works: OpenAI itself, vLLM (`vllm serve MODEL`), llama.cpp's `llama-server`.

The API key is read from an environment variable and only ever handed to the client: it is not
stored in the settings, the cache or any message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tangpoem.errors import InputError
from tangpoem.io import atomic_write_json

RUBRIC_TEMPLATE = "judge_rubric.j2"
CACHE_VERSION = 1  # part of every cache key: bump it when the cached answer's meaning changes
NO_KEY = "no-key"  # sent when no key is set: local servers (vLLM, llama.cpp) accept any
MAX_RETRY_WAIT = 60.0  # seconds; also caps a server's Retry-After
SCORE_FIELDS = ("format_score", "content_score")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tangpoem" / "judge"


@dataclass(frozen=True)
class JudgeSettings:
    url: str                               # base URL of the API, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"    # the variable that holds the key (unset: no key is sent)
    cache_dir: str | os.PathLike | None = None  # None: $XDG_CACHE_HOME/tangpoem/judge or ~/.cache/...
    timeout: float = 60.0                  # seconds for one request
    tries: int = 4                         # requests per poem, at most, on HTTP 429/5xx, timeouts, no connection
    retry_delay: float = 1.0               # first wait between tries; doubles each time
    workers: int = 4                       # requests in flight at once
    temperature: float = 0.0               # the course sampled at 1.0 (and kept the best of 3); 0 repeats
    with_reference: bool = False           # also show the judge the original poem (the course did not)

    def __post_init__(self) -> None:
        for name in ("url", "model"):
            if not str(getattr(self, name)).strip():
                raise InputError(f"judge: --judge-{name} is empty")
        if self.tries < 1 or self.workers < 1:
            raise InputError(f"judge: tries ({self.tries}) and workers ({self.workers}) must be at least 1")
        if not self.timeout > 0 or self.retry_delay < 0:
            raise InputError(f"judge: timeout must be > 0 and retry delay >= 0 (got {self.timeout}, {self.retry_delay})")


@dataclass(frozen=True)
class Answer:
    format_score: float
    content_score: float
    reason: str
    cached: bool = False


class JudgeError(Exception):
    """No usable answer for one poem; the message is one line saying why.

    `transport` is True when the request itself failed (no connection, timeout, HTTP error), as
    opposed to an answer that came back but could not be read.
    """

    def __init__(self, message: str, transport: bool = False):
        super().__init__(message)
        self.transport = transport


# ---------------------------------------------------------------- reading an answer


def _json_object(text: str) -> dict | None:
    """The first JSON object in `text`: the whole text, or one embedded in prose or a ``` fence."""
    decoder = json.JSONDecoder()
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except ValueError:
        pass
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return None


def _score(fields: dict, name: str) -> float:
    if name not in fields:
        raise JudgeError(f"the answer has no {name}")
    value = fields[name]
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise JudgeError(f"{name} is not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JudgeError(f"{name} is not a number: {str(value)[:40]!r}")
    if not 0 <= value <= 10:
        raise JudgeError(f"{name} {value:g} is outside 0-10")
    return float(value)


def answer_from_fields(fields: dict, cached: bool = False) -> Answer:
    """Check the judge's JSON fields: both scores numbers (or numeric strings) in [0, 10]."""
    scores = [_score(fields, name) for name in SCORE_FIELDS]
    reason = fields.get("reason")
    reason = " ".join(str(reason).split()) if reason not in (None, "") else "(no reason given)"
    return Answer(scores[0], scores[1], reason, cached)


def parse_answer(text: str | None) -> Answer:
    """Read the judge's reply text; raises JudgeError naming what is wrong with it."""
    if not text or not text.strip():
        raise JudgeError("the judge's answer is empty")
    fields = _json_object(text)
    if fields is None:
        raise JudgeError(f"the answer is not JSON: {' '.join(text.split())[:80]!r}")
    return answer_from_fields(fields)


# ---------------------------------------------------------------- the client


class JudgeClient:
    """Asks one judge model about one poem at a time (thread-safe: `workers` threads share it)."""

    def __init__(self, settings: JudgeSettings):
        import jinja2
        import openai

        self.settings = settings
        key = os.environ.get(settings.api_key_env)
        if settings.api_key_env != "OPENAI_API_KEY" and not key:
            raise InputError(f"judge: environment variable {settings.api_key_env} (--judge-api-key-env) is not set")
        self._secret = key or None  # kept only to blank it out of error messages
        # max_retries=0: the retries are ours (tenacity), with our delays and a per-poem bound.
        self._client = openai.OpenAI(base_url=settings.url, api_key=key or NO_KEY, timeout=settings.timeout,
                                     max_retries=0)
        self._openai = openai
        env = jinja2.Environment(loader=jinja2.PackageLoader("tangpoem.grade", "templates"),
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.rubric_source = env.loader.get_source(env, RUBRIC_TEMPLATE)[0]
        self._rubric = env.get_template(RUBRIC_TEMPLATE)
        self.cache_dir = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
        self._json_mode = True  # response_format={"type": "json_object"} until the server refuses it
        self._lock = threading.Lock()

    def render(self, couplet: str, continuation: str, reference: str | None) -> str:
        return self._rubric.render(couplet=couplet, continuation=continuation, reference=reference).strip() + "\n"

    def cache_key(self, couplet: str, continuation: str, reference: str | None) -> str:
        """sha256 of what decides the answer: model, rubric text, couplet, continuation, reference, temperature."""
        parts = {"cache": CACHE_VERSION, "model": self.settings.model, "rubric": self.rubric_source,
                 "couplet": couplet, "continuation": continuation, "reference": reference,
                 "temperature": self.settings.temperature}
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()

    def ask(self, couplet: str, continuation: str, reference: str | None = None) -> Answer:
        """The judge's scores for couplet + continuation, from the cache or the server."""
        key = self.cache_key(couplet, continuation, reference)
        cached = self._read_cache(key)
        if cached is not None:
            return cached
        text = self._request(self.render(couplet, continuation, reference))
        answer = parse_answer(text)
        entry = {"model": self.settings.model, "format_score": answer.format_score,
                 "content_score": answer.content_score, "reason": answer.reason, "answer": text}
        try:
            atomic_write_json(self.cache_dir / f"{key}.json", entry)
        except OSError:
            pass  # a cache that cannot be written costs a request next time, nothing more
        return answer

    def redact(self, message: str) -> str:
        return message.replace(self._secret, "***") if self._secret else message

    # -------------------------------------------------------------- cache

    def _read_cache(self, key: str) -> Answer | None:
        path = self.cache_dir / f"{key}.json"
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            return answer_from_fields(fields, cached=True) if isinstance(fields, dict) else None
        except (OSError, ValueError, JudgeError):
            return None  # absent or unreadable: ask again (and overwrite it)

    # -------------------------------------------------------------- HTTP

    def _request(self, prompt: str) -> str | None:
        """The reply's text; retried with exponential backoff on 429, 5xx, timeouts and lost connections."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        try:
            for attempt in Retrying(stop=stop_after_attempt(self.settings.tries), wait=self._wait,
                                    retry=retry_if_exception(self._transient), reraise=True):
                with attempt:
                    return self._create([{"role": "user", "content": prompt}])
        except self._openai.OpenAIError as exc:
            raise JudgeError(self.redact(self._describe(exc)), transport=True) from None
        return None  # not reached: Retrying either returns or re-raises

    def _create(self, messages: list[dict]) -> str | None:
        request: dict[str, Any] = {"model": self.settings.model, "messages": messages,
                                   "temperature": self.settings.temperature}
        if self._json_mode:
            try:
                return self._text(self._client.chat.completions.create(
                    **request, response_format={"type": "json_object"}))
            except self._openai.BadRequestError:
                # Some servers refuse response_format (or this model's use of it): ask in plain text once;
                # if that works, stop asking for JSON mode. The rubric asks for JSON either way.
                text = self._text(self._client.chat.completions.create(**request))
                with self._lock:
                    self._json_mode = False
                return text
        return self._text(self._client.chat.completions.create(**request))

    @staticmethod
    def _text(completion: Any) -> str | None:
        try:
            return completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise JudgeError("the server's reply is not a chat completion (no choices[0].message)") from None

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, self._openai.APIConnectionError):  # includes APITimeoutError
            return True
        return isinstance(exc, self._openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)

    def _wait(self, retry_state: Any) -> float:
        """base * 2^(try-1), or the server's Retry-After when longer; at most MAX_RETRY_WAIT seconds."""
        delay = self.settings.retry_delay * 2 ** (retry_state.attempt_number - 1)
        exc = retry_state.outcome.exception()
        response = getattr(exc, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", "")))
            except ValueError:
                pass  # absent, or an HTTP date: keep our own delay
        return min(delay, MAX_RETRY_WAIT)

    def _describe(self, exc: Exception) -> str:
        tries = f"{self.settings.tries} tr{'y' if self.settings.tries == 1 else 'ies'}"
        if isinstance(exc, self._openai.APITimeoutError):
            return f"no answer within {self.settings.timeout:g} s ({tries})"
        if isinstance(exc, self._openai.APIConnectionError):
            cause: BaseException = exc
            for _ in range(10):  # down the chain to the socket error, which says most
                if (cause.__cause__ or cause.__context__) is None:
                    break
                cause = cause.__cause__ or cause.__context__
            return f"cannot reach {self.settings.url}: {' '.join(str(cause).split())[:120] or type(cause).__name__} ({tries})"
        if isinstance(exc, self._openai.APIStatusError):
            body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None  # OpenAI's {"error": {...}}
            message = body.get("message") if isinstance(body, dict) and body.get("message") else exc.message
            detail = " ".join(re.sub(r"^Error code: \d+ - ", "", str(message)).split())[:160]
            return f"HTTP {exc.status_code} from the judge: {detail}" + (f" ({tries})" if self._transient(exc) else "")
        return " ".join(str(exc).split())[:160]


# ---------------------------------------------------------------- CLI flags


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The --judge-* options of `tangpoem grade`."""
    group = parser.add_argument_group("LLM judge", "score each poem's form and content 0-10 with a chat model, "
                                                   "as the course did, and turn them into the course's marks")
    group.add_argument("--judge-url", metavar="URL", help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1 "
                                                         "(vLLM), http://127.0.0.1:8080/v1 (llama.cpp), https://api.openai.com/v1")
    group.add_argument("--judge-model", metavar="NAME", help="model name as the server knows it")
    group.add_argument("--judge-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                       help="environment variable holding the API key (default OPENAI_API_KEY; if unset, a "
                            "placeholder is sent, which local servers accept)")
    group.add_argument("--judge-cache", metavar="DIR", help=f"answer cache (default {default_cache_dir()})")
    group.add_argument("--judge-timeout", metavar="S", type=float, default=60.0, help="seconds per request (60)")
    group.add_argument("--judge-tries", metavar="N", type=int, default=4,
                       help="requests per poem at most, on HTTP 429/5xx, timeouts, lost connections (4)")
    group.add_argument("--judge-retry-delay", metavar="S", type=float, default=1.0,
                       help="first wait between tries in seconds, doubling each time (1)")
    group.add_argument("--judge-workers", metavar="N", type=int, default=4, help="requests in flight at once (4)")
    group.add_argument("--judge-with-reference", action="store_true",
                       help="also show the judge the original poem (the course's judge did not see it)")


def settings_from_args(args: argparse.Namespace) -> JudgeSettings | None:
    """JudgeSettings from the --judge-* flags; None when no judge was asked for."""
    if args.judge_url is None and args.judge_model is None:
        return None
    if args.judge_url is None or args.judge_model is None:
        raise InputError("judge: give both --judge-url and --judge-model")
    return JudgeSettings(url=args.judge_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                         cache_dir=args.judge_cache, timeout=args.judge_timeout, tries=args.judge_tries,
                         retry_delay=args.judge_retry_delay, workers=args.judge_workers,
                         with_reference=args.judge_with_reference)
