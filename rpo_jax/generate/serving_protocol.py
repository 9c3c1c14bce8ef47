"""The OpenAI chat-completions protocol as `rpo-jax serve` speaks it: request validation and reply bodies.

Pure functions, no model: a request becomes a `ChatRequest` or a `RequestError` (an HTTP status and an OpenAI-style
error body naming the field). Supported fields: `model`, `messages`, `temperature`, `top_p`, `max_tokens` (or
`max_completion_tokens`), `stop`, `n`, `stream` and `stream_options.include_usage`; the penalty fields only at
their neutral 0. Any other field is refused rather than silently ignored, and so is a string JSON can carry but
UTF-8 cannot (a lone surrogate such as "\\ud800").
"""

from __future__ import annotations

import dataclasses
import time

ROLES = ("system", "user", "assistant")
# Accepted only at the value that changes nothing; `user` is an end-user tag with no effect on the output (as at
# OpenAI).
NEUTRAL_FIELDS = {"presence_penalty": 0, "frequency_penalty": 0}
KNOWN_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "n", "user"}
KNOWN_FIELDS |= {"stream", "stream_options"}
MAX_N = 16
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP status, `param` the offending field, `headers` extra reply
    headers (Retry-After, Connection: close)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers or {}

    def body(self) -> dict:
        return error_body(self.status, str(self), self.param)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict, ...]
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    n: int
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(400, f"'{name}' must be a number in [{low}, {high}], got {value!r}", name)
    return float(value)


def _utf8(text: str, param: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(400, f"'{param}' holds a lone surrogate at character {err.start}, not UTF-8", param) from err
    return text


def _messages(body: dict) -> tuple[dict, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"messages[{index}].role must be one of {ROLES}", f"messages[{index}].role")
        if not isinstance(message.get("content"), str):
            raise RequestError(400, f"messages[{index}].content must be a string", f"messages[{index}].content")
        _utf8(message["content"], f"messages[{index}].content")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(_utf8(s, "stop") for s in stops)


def _streaming(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage); stream_options only with stream true, as at OpenAI."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream not in (None, True, False):
        raise RequestError(400, f"'stream' must be true or false, got {stream!r}", "stream")
    if options is None:
        return bool(stream), False
    if not stream:
        raise RequestError(400, "'stream_options' is only allowed with 'stream': true", "stream_options")
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(usage, bool):
        raise RequestError(400, "'stream_options' supports only {\"include_usage\": true|false}", "stream_options")
    return True, usage


def parse_chat_request(body: object, served_model: str, default_max_tokens: int) -> ChatRequest:
    """The validated request, or RequestError naming the field (404 for a model this server does not serve)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    for name, value in body.items():
        if name in NEUTRAL_FIELDS:
            if value not in (NEUTRAL_FIELDS[name], None):
                raise RequestError(400, f"'{name}' = {value!r} is not supported (only {NEUTRAL_FIELDS[name]!r})", name)
        elif name not in KNOWN_FIELDS:
            raise RequestError(400, f"unsupported field {name!r} (supported: {', '.join(sorted(KNOWN_FIELDS))})", name)
    if body.get("model") != served_model:
        message = f"model {body.get('model')!r} is not served here (this server serves {served_model!r})"
        raise RequestError(404, message, "model")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", "max_tokens")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise RequestError(400, "'top_p' must be > 0", "top_p")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise RequestError(400, f"'n' must be an integer in [1, {MAX_N}], got {n!r}", "n")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    return ChatRequest(_messages(body), temperature, top_p, max_tokens, _stop(body), n, *_streaming(body))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def completion_body(request_id: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int, generated: int):
    """A `chat.completion` object; `choices` are (text, finish_reason) pairs."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": _usage(prompt_tokens, generated),
    }


def chunk_body(request_id: str, model: str, created: int, choices: list[dict], usage: tuple[int, int] | None = None):
    """A `chat.completion.chunk` (one server-sent event of a stream); `choices` are {index, delta, finish_reason}.
    `usage` (prompt, completion tokens) makes the last chunk of a stream that asked for it."""
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
    return {**chunk, "choices": choices, **({"usage": _usage(*usage)} if usage else {})}


def models_body(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "rpo-jax"}]}
