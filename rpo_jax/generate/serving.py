"""`rpo-jax serve`: an OpenAI-compatible chat server (`/v1/chat/completions`, `/v1/models`) on the KV-cache
sampler, so the LLM judge and reverser of `build-pairs` need no outside service.

- Standard library HTTP (`ThreadingHTTPServer`); one thread per connection validates the request
  (`serving_protocol`) and queues it. One batcher thread owns the model: it takes the queued requests (waiting up
  to `batch_wait_ms` for more once one arrives, at most `max_batch_size` sequences), groups those with the same
  temperature / top_p / max_tokens (compile-time constants of the sampler), and decodes each group as one batch.
- Prompts go through the model's chat template; `stop` strings are cut on the host; `finish_reason` is "stop"
  (EOS or a stop string) or "length". Batches are padded to a power of two rows so few programs are compiled.
- Sampling keys are fold_in(seed, batch number): greedy requests (temperature 0, what the judge sends) always get
  the same answer; sampled ones depend on which requests shared their batch.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from data_pipeline.errors import UserError
from rpo_jax.config.schema import MeshConfig
from rpo_jax.generate.serving_protocol import (
    ChatRequest,
    RequestError,
    completion_body,
    models_body,
    parse_chat_request,
)


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    model: str  # params checkpoint or HF Llama folder
    tokenizer: str | None = None  # None: the model folder (an HF folder carries its tokenizer)
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the URL is printed)
    model_name: str | None = None  # the `model` clients send; None: the model folder's name
    max_batch_size: int = 8  # sequences decoded together
    batch_wait_ms: float = 20.0  # how long a batch waits for more requests once one arrived
    default_max_tokens: int = 512  # max_tokens of a request that gives none
    seed: int = 0
    use_lora: bool = True

    def __post_init__(self):
        if self.max_batch_size < 1 or self.batch_wait_ms < 0 or self.default_max_tokens < 1:
            raise UserError("--max-batch-size and --max-tokens must be >= 1, --batch-wait-ms >= 0")
        if not 0 <= self.port < 65536:
            raise UserError(f"--port must be in [0, 65535], got {self.port}")
        if not Path(self.model).exists():
            raise UserError(f"--model {self.model}: no such checkpoint or folder")

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.model).resolve().name


@dataclasses.dataclass
class _Job:
    request: ChatRequest
    prompt_ids: list[int]
    future: Future


class ChatEngine:
    """The model side: chat template (any thread), batched decoding and stop strings (the batcher thread)."""

    def __init__(self, settings: ServeSettings, mesh_cfg: MeshConfig | None = None):
        import jax

        from rpo_jax.generate.generation import load_for_sampling

        tokenizer_dir = settings.tokenizer or settings.model
        self.loaded = load_for_sampling(settings.model, tokenizer_dir, mesh_cfg, settings.use_lora)
        self.max_positions = self.loaded.model_config.max_position_embeddings
        self.key = jax.random.key(settings.seed)
        self.batches = 0

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        ids = self.loaded.tokenizer.apply_chat_template(
            list(request.messages), add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        if len(ids) + request.max_tokens > self.max_positions:
            raise RequestError(
                400,
                f"{len(ids)} prompt tokens + max_tokens {request.max_tokens} exceed the model's context "
                f"({self.max_positions} positions)",
                "max_tokens",
            )
        return list(ids)

    def generate(self, jobs: list[_Job], rows: int) -> list[list[tuple[str, str, int]]]:
        """Per job, its n choices as (text, finish_reason, generated tokens); all jobs share sampling settings."""
        import jax

        from rpo_jax.generate.sampler import SamplingParams, truncate_at_stop

        first = jobs[0].request
        params = SamplingParams(
            max_new_tokens=first.max_tokens,
            eos_ids=self.loaded.eos_ids,
            pad_id=self.loaded.pad_id,
            temperature=first.temperature,
            top_p=first.top_p,
        )
        prompts = [job.prompt_ids for job in jobs for _ in range(job.request.n)]
        padded = prompts + [prompts[0]] * (rows - len(prompts))
        completions = iter(self.loaded.sampler.generate(padded, params, jax.random.fold_in(self.key, self.batches)))
        self.batches += 1
        results = []
        for job in jobs:
            choices = []
            for _ in range(job.request.n):
                completion = next(completions)
                text = self.loaded.tokenizer.decode(completion.tokens, skip_special_tokens=True)
                text, cut = truncate_at_stop(text, job.request.stop)
                choices.append((text, "stop" if cut or completion.stopped else "length", len(completion.tokens)))
            results.append(choices)
        return results


def _rows_for(sequences: int, max_batch_size: int) -> int:
    """The power of two >= `sequences` (capped at max_batch_size): few distinct batch shapes, few compiles."""
    rows = 1
    while rows < sequences:
        rows *= 2
    return max(min(rows, max_batch_size), sequences)


class Batcher:
    """Collects queued jobs into batches of equal sampling settings and runs them on the engine, one at a time."""

    def __init__(self, engine: ChatEngine, max_batch_size: int, batch_wait_s: float):
        self.engine, self.max_batch_size, self.batch_wait_s = engine, max_batch_size, batch_wait_s
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="rpo-jax-batcher", daemon=True)

    def submit(self, request: ChatRequest, prompt_ids: list[int]) -> Future:
        future: Future = Future()
        self.jobs.put(_Job(request, prompt_ids, future))
        return future

    def _collect(self, first: _Job) -> list[_Job]:
        batch, deadline = [first], time.monotonic() + self.batch_wait_s
        while sum(job.request.n for job in batch) < self.max_batch_size:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # keep the stop signal for the loop
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while (first := self.jobs.get()) is not None:
            groups: dict[tuple, list[_Job]] = {}
            for job in self._collect(first):
                r = job.request
                groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        while jobs:  # one job may ask for n > what fits next to the others: split at max_batch_size sequences
            take, sequences = [], 0
            while jobs and (not take or sequences + jobs[0].request.n <= self.max_batch_size):
                sequences += jobs[0].request.n
                take.append(jobs.pop(0))
            try:
                for job, choices in zip(take, self.engine.generate(take, _rows_for(sequences, self.max_batch_size))):
                    job.future.set_result(choices)
            except Exception as err:  # reported to each waiting client as HTTP 500, the server keeps running
                for job in take:
                    job.future.set_exception(err)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=60)


class ChatServer:
    """The HTTP server around a batcher; `start()` serves on a background thread, `close()` stops it."""

    def __init__(self, settings: ServeSettings, engine: ChatEngine):
        self.settings, self.engine = settings, engine
        self.batcher = Batcher(engine, settings.max_batch_size, settings.batch_wait_ms / 1000)
        self.created, self.requests = int(time.time()), 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((settings.host, settings.port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="rpo-jax-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def chat(self, body: object) -> dict:
        request = parse_chat_request(body, self.settings.served_name, self.settings.default_max_tokens)
        ids = self.engine.prompt_ids(request)
        choices = self.batcher.submit(request, ids).result()
        with self.lock:
            self.requests += 1
            request_id = self.requests
        generated = sum(tokens for _, _, tokens in choices)
        return completion_body(
            request_id, self.settings.served_name, [(t, r) for t, r, _ in choices], len(ids), generated
        )

    def start(self) -> ChatServer:
        self.batcher.start()
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # one line per request would drown the batch log
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._reply(200, models_body(server.settings.served_name, server.created))
            else:
                self._reply(404, RequestError(404, f"no such endpoint: GET {self.path}").body())

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._reply(404, RequestError(404, f"no such endpoint: POST {self.path}").body())
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise RequestError(400, f"the request body is not JSON: {err}") from err
                self._reply(200, server.chat(body))
            except RequestError as err:
                self._reply(err.status, err.body())
            except Exception as err:  # a bug or a failed batch: the client gets a 500, the server keeps serving
                self._reply(500, {"error": {"message": f"{type(err).__name__}: {err}", "type": "server_error"}})

    return Handler


def serve(settings: ServeSettings, mesh_cfg: MeshConfig | None = None) -> None:
    """Loads the model and serves until interrupted (Ctrl-C); prints the base URL to give `--judge-base-url`."""
    engine = ChatEngine(settings, mesh_cfg)
    try:
        server = ChatServer(settings, engine)
    except OSError as err:
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {err}") from err
    server.start()
    print(f"serving {settings.served_name!r} at {server.url} (--judge-base-url {server.url})", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
