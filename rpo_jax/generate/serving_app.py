"""The HTTP side of `rpo-jax serve`: a Starlette app (run by uvicorn, `serving`) in front of the batcher.

Routes: POST /v1/chat/completions (and /chat/completions), GET /v1/models (/models), GET /health; a query string
is ignored. Every answer is JSON (a stream's server-sent events aside), errors in OpenAI's shape: an unknown route
404, a wrong method 405, a refused request 4xx naming the field, a failed batch 500 with no traceback or path.

A chat request meets its limits before any work: the body is read up to `max_body_bytes` (413 at once when
Content-Length says more; a chunked body is read on, discarded, to its end or 8 caps, so the client is there to read
its 413) within `read_timeout_s` (408); parsed (400: malformed, nested too deeply, not UTF-8); validated
(`serving_protocol`); bounded in length, then tokenized on a worker thread (`serving_engine`); queued (503 with
Retry-After when `max_queue` requests wait). A client that disconnects cancels its job, waiting or decoding.
`stream: true` answers with server-sent events: a role chunk, text chunks, a finish chunk per choice, the usage
chunk when `stream_options.include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rpo_jax.generate.serving_batcher import ChoiceDelta, ChoiceEnd, Job, JobFailed, QueueFull
from rpo_jax.generate.serving_protocol import (
    RequestError,
    chunk_body,
    completion_body,
    error_body,
    models_body,
    parse_chat_request,
)
from rpo_jax.generate.serving_security import AccessLog, Guard

log = logging.getLogger("rpo_jax.serve")
DRAIN_CAPS = 8  # an oversized chunked body is read on (and dropped) up to this many caps before the 413


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), err.status, headers=err.headers)


async def _body(request: Request, cap: int, timeout_s: float) -> bytes:
    close = {"Connection": "close"}
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > cap:  # uvicorn (h11) has checked it is a number
        raise RequestError(413, f"the request body is {declared} bytes; this server takes at most {cap}", None, close)
    body, seen = bytearray(), 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= cap:
                    body += chunk
                elif seen > DRAIN_CAPS * cap:
                    break
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s", None, close) from None
    if seen > cap:
        raise RequestError(413, f"the request body is over {cap} bytes, the most this server takes", None, close)
    return bytes(body)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the request body is not JSON: {err}") from err
    except RecursionError:
        raise RequestError(400, "the request body's JSON is nested too deeply") from None


async def _ends(job: Job) -> list[ChoiceEnd]:
    """Every choice's end, in choice order; a failed batch raises."""
    ends: dict[int, ChoiceEnd] = {}
    while len(ends) < job.request.n:
        event = await job.events.get()
        if isinstance(event, JobFailed):
            raise RequestError(event.status, event.message)
        if isinstance(event, ChoiceEnd):
            ends[event.index] = event
    return [ends[i] for i in range(job.request.n)]


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read: uvicorn's next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ChatApp:
    """The routes' handlers, over one engine and batcher."""

    def __init__(self, settings, engine, batcher):
        self.settings, self.engine, self.batcher = settings, engine, batcher
        self.created, self.ids = int(time.time()), itertools.count(1)

    async def chat(self, request: Request) -> Response:
        s = self.settings
        chat_request = parse_chat_request(
            _json(await _body(request, s.max_body_bytes, s.read_timeout_s)), s.served_name, s.default_max_tokens
        )
        job = Job(chat_request, await run_in_threadpool(self.engine.prompt_ids, chat_request))
        try:
            self.batcher.submit(job)
        except QueueFull as err:
            raise RequestError(503, f"the server is busy: {err}; retry later", None, {"Retry-After": "1"}) from err
        request_id = f"chatcmpl-{next(self.ids)}"
        if chat_request.stream:
            events = self._events(job, request_id, request)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        ends, gone = asyncio.ensure_future(_ends(job)), asyncio.ensure_future(_disconnect(request))
        try:
            await asyncio.wait({ends, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            job.cancel()  # no-op once every choice has ended; else the client is gone: stop decoding for it
        if not ends.done():
            ends.cancel()
            return Response(status_code=499)  # nobody is left to read it
        choices = ends.result()
        request.state.usage = (len(job.prompt_ids), sum(end.tokens for end in choices))
        texts = [(end.text, end.reason) for end in choices]
        return JSONResponse(completion_body(request_id, s.served_name, texts, *request.state.usage))

    async def _events(self, job: Job, request_id: str, request: Request):
        """The server-sent events of a stream; closing it (the client went away) cancels the job."""
        name, created, n = self.settings.served_name, int(time.time()), job.request.n
        started, ended, completion = set(), 0, 0

        def event(choices, usage=None) -> str:
            return f"data: {json.dumps(chunk_body(request_id, name, created, choices, usage), ensure_ascii=False)}\n\n"

        try:
            while ended < n:
                update = await job.events.get()
                if isinstance(update, JobFailed):
                    yield f"data: {json.dumps(error_body(update.status, update.message))}\n\n"
                    return
                if update.index not in started:
                    started.add(update.index)
                    yield event([{"index": update.index, "delta": {"role": "assistant", "content": ""}}])
                if isinstance(update, ChoiceDelta):
                    yield event([{"index": update.index, "delta": {"content": update.text}, "finish_reason": None}])
                else:
                    ended, completion = ended + 1, completion + update.tokens
                    yield event([{"index": update.index, "delta": {}, "finish_reason": update.reason}])
            request.state.usage = (len(job.prompt_ids), completion)
            if job.request.include_usage:
                yield event([], request.state.usage)
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()

    async def models(self, request: Request) -> Response:
        return JSONResponse(models_body(self.settings.served_name, self.created))

    async def health(self, request: Request) -> Response:
        counts = {"queued": self.batcher.queued(), "batches": self.engine.batches}
        return JSONResponse({"status": "ok", "model": self.settings.served_name, **counts})


def _json_errors(handler):
    """Every failure of a handler becomes a JSON answer: RequestError its status, anything else a logged 500."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as err:
            return _error(err)
        except ClientDisconnect:
            return Response(status_code=499)  # the client left while sending its body
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse(error_body(500, "the server failed on this request; its log has details"), 500)

    return answer


async def _http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's own refusals (no such route 404, wrong method 405) in OpenAI's error shape."""
    message = f"{request.method} {request.url.path}: {err.detail}"
    return JSONResponse(error_body(err.status_code, message), err.status_code, headers=err.headers)


def build_app(settings, engine, batcher) -> Starlette:
    handlers = ChatApp(settings, engine, batcher)
    routes = [
        Route(path, _json_errors(handlers.chat), methods=["POST"])
        for path in ("/v1/chat/completions", "/chat/completions")
    ]
    routes += [Route(path, _json_errors(handlers.models), methods=["GET"]) for path in ("/v1/models", "/models")]
    routes.append(Route("/health", _json_errors(handlers.health), methods=["GET"]))
    middleware = [Middleware(AccessLog), Middleware(Guard, settings.host_names, settings.api_key)]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
