"""LLM judge and reverser for free-form constraints, over an OpenAI-compatible `/chat/completions` endpoint.

Two prompts (temperature 0): (a) per-constraint True/False verdicts of a response, as JSON; (b) the reversal of a
constraint text (what the official RPO pipeline asks gpt-4o-mini for, docs/algorithms.md §5 step 2).

- Standard library only (urllib). The API key is read from the environment variable named in the config.
- Disk cache: one file per request, named by the sha256 of the canonical request JSON, written atomically; the
  raw answer is cached, so a changed parser re-reads old answers without new calls.
- Retries with exponential backoff on HTTP 429 / 5xx and timeouts only. Anything else fails at once with one line
  naming the URL (a `JudgeError`, which the CLI prints without a traceback): a refused connection means nothing
  listens there, and waiting will not change that.
- `*_many` run requests on a thread pool of `max_workers`, the bound on concurrent requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import UserError

JUDGE_SYSTEM = (
    "You are a strict grader of instruction following. You judge each constraint on its own, "
    "literally, and answer with JSON only."
)
REVERSE_SYSTEM = "You rewrite constraints of writing tasks into their exact opposite. You answer with JSON only."


class JudgeError(UserError, RuntimeError):
    """The judge is misconfigured or its endpoint failed (after retries, or with a non-retryable error)."""


class JudgeParseError(ValueError):
    """The model's answer is not the JSON the prompt asked for."""


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str
    model: str
    cache_dir: Path
    api_key_env: str | None = None
    max_workers: int = 4
    max_retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-base-url must start with http:// or https://, got {self.base_url!r}")
        if self.max_workers < 1:
            raise JudgeError(f"--judge-max-workers must be >= 1, got {self.max_workers}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise JudgeError(f"judge settings out of range: {self}")


def judge_messages(prompt: str, response: str, constraint_texts: Sequence[str]) -> list[dict]:
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(constraint_texts, start=1))
    user = (
        f"Request:\n<<<\n{prompt}\n>>>\n\nResponse:\n<<<\n{response}\n>>>\n\nConstraints:\n{numbered}\n\n"
        f"For each numbered constraint, decide whether the response satisfies it. Answer with JSON only, "
        f'in this form: {{"judgements": [true, false, ...]}}, exactly {len(constraint_texts)} booleans in '
        f"constraint order."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def reverse_messages(constraint_text: str) -> list[dict]:
    user = (
        f"Constraint:\n<<<\n{constraint_text}\n>>>\n\nRewrite it as its reversal: a response must satisfy the "
        f"rewritten constraint exactly when it violates the original one, covering every way to violate it. "
        f"Flip the modality or condition (must <-> must not, at least <-> fewer than, include <-> omit); keep "
        f'everything else. Answer with JSON only, in this form: {{"reversed": "..."}}.'
    )
    return [{"role": "system", "content": REVERSE_SYSTEM}, {"role": "user", "content": user}]


def _json_object(content: str) -> dict:
    # Models often wrap JSON in a ```json fence or add a sentence around it.
    match = re.search(r"\{.*\}", content, flags=re.DOTALL)
    if match is None:
        raise JudgeParseError(f"no JSON object in the answer: {content!r:.200}")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise JudgeParseError(f"invalid JSON in the answer ({err.msg}): {content!r:.200}") from err
    if not isinstance(obj, dict):
        raise JudgeParseError(f"answer is not a JSON object: {content!r:.200}")
    return obj


def parse_judgements(content: str, expected: int) -> list[bool]:
    verdicts = _json_object(content).get("judgements")
    if not isinstance(verdicts, list) or not all(isinstance(v, bool) for v in verdicts):
        raise JudgeParseError(f"'judgements' must be a list of booleans: {content!r:.200}")
    if len(verdicts) != expected:
        raise JudgeParseError(f"expected {expected} judgements, got {len(verdicts)}: {content!r:.200}")
    return verdicts


def parse_reversal(content: str, original: str) -> str:
    reversed_text = _json_object(content).get("reversed")
    if not isinstance(reversed_text, str) or not reversed_text.strip():
        raise JudgeParseError(f"'reversed' must be a non-empty string: {content!r:.200}")
    if reversed_text.strip() == original.strip():
        raise JudgeParseError(f"the reversal repeats the constraint unchanged: {original!r:.200}")
    return reversed_text.strip()


class LLMJudge:
    """Cached, retrying, concurrency-bounded client. `counts` holds requests / cache_hits / retries / parse_errors."""

    def __init__(self, config: JudgeConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self._api_key = None
        if config.api_key_env:
            self._api_key = os.environ.get(config.api_key_env)
            if not self._api_key:
                raise JudgeError(f"environment variable {config.api_key_env!r} (judge API key) is not set")
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _cache_path(self, body: dict) -> Path:
        canonical = json.dumps({"base_url": self.config.base_url, "body": body}, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return self.config.cache_dir / digest[:2] / f"{digest}.json"

    def complete(self, messages: list[dict]) -> str:
        """The assistant text for `messages`, from the cache when this exact request was made before."""
        body = {"model": self.config.model, "messages": messages, "temperature": 0}
        path = self._cache_path(body)
        if path.is_file():
            self._count("cache_hits")
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        content = self._post_with_retries(body)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"request": body, "content": content}, handle, ensure_ascii=False)
        os.replace(tmp, path)
        return content

    def _post_with_retries(self, body: dict) -> str:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.config.max_retries + 1):
            self._count("requests")
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as reply:
                    raw = reply.read().decode("utf-8", errors="replace")
                try:
                    payload = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise JudgeError(f"judge {url}: the reply is not JSON: {raw!r:.200}") from err
                return _assistant_text(payload, url)
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge {url}: HTTP {err.code} {err.reason} (not retried)") from err
                failure = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError) as err:
                reason = err.reason if isinstance(err, urllib.error.URLError) else err
                if not isinstance(reason, TimeoutError | socket.timeout):
                    raise JudgeError(f"judge {url} unreachable: {_describe(reason)} (not retried)") from err
                failure = f"timed out after {self.config.timeout_s:g} s"
            if attempt == self.config.max_retries:
                raise JudgeError(f"judge {url}: gave up after {attempt + 1} attempts, last: {failure}")
            self._count("retries")
            self._sleep(min(self.config.backoff_s * 2**attempt, self.config.backoff_max_s))
        raise AssertionError("unreachable")

    def judge(self, prompt: str, response: str, constraint_texts: Sequence[str]) -> list[bool]:
        content = self.complete(judge_messages(prompt, response, constraint_texts))
        try:
            return parse_judgements(content, len(constraint_texts))
        except JudgeParseError:
            self._count("parse_errors")
            raise

    def reverse(self, constraint_text: str) -> str:
        content = self.complete(reverse_messages(constraint_text))
        try:
            return parse_reversal(content, constraint_text)
        except JudgeParseError:
            self._count("parse_errors")
            raise

    def _map(self, fn: Callable, args: list[tuple]) -> list:
        """fn(*a) for each a, at most max_workers at once; a JudgeParseError is returned in place of its result."""

        def call(a: tuple):
            try:
                return fn(*a)
            except JudgeParseError as err:
                return err

        with ThreadPoolExecutor(max_workers=self.config.max_workers) as pool:
            return list(pool.map(call, args))

    def judge_many(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> list[list[bool] | JudgeParseError]:
        return self._map(self.judge, list(items))

    def reverse_many(self, texts: Sequence[str]) -> list[str | JudgeParseError]:
        return self._map(self.reverse, [(t,) for t in texts])


def _describe(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running? `rpo-jax serve` runs one locally)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason})"
    return f"{type(reason).__name__}: {reason}"


def _assistant_text(payload: object, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError) as err:
        raise JudgeError(f"judge {url}: reply is not a chat completion: {payload!r:.200}") from err
    if not isinstance(content, str):
        raise JudgeError(f"judge {url}: reply content is not text: {content!r:.200}")
    return content
