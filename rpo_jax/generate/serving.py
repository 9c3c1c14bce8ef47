"""`rpo-jax serve`: an OpenAI-compatible chat server (`/v1/chat/completions`, `/v1/models`, `/health`) on the KV-cache
sampler, so the LLM judge and reverser of `build-pairs` need no outside service.

uvicorn runs a Starlette app (`serving_app`; its HTTP protocol `serving_http`, its guards and access log
`serving_security`); handlers validate and tokenize requests and queue them (`serving_batcher`); one batcher thread
owns the model and decodes batches chunk by chunk (`serving_engine`). Sampling keys are fold_in(seed, batch
number): greedy requests (temperature 0, what the judge sends) always get the same answer; sampled ones depend on
which requests shared their batch.

Safe on a pod: it listens on 127.0.0.1 unless told otherwise, and then answers only requests whose Host header is
a loopback name; every request is bounded (body size, read timeouts, queue length, prompt length) before work. To
serve other hosts, listen beyond (`--host 0.0.0.0`) with an API key (`RPO_JAX_API_KEY`, or `--api-key`); without
one, the server starts with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from data_pipeline.errors import UserError
from rpo_jax.config.schema import MeshConfig
from rpo_jax.generate.serving_engine import ChatEngine
from rpo_jax.generate.serving_security import API_KEY_VARIABLE, default_allowed_hosts, is_loopback

KEEP_ALIVE_S = 5  # an idle connection is closed after this
GRACEFUL_S = 5  # on stop, how long answers in flight may still take


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
    api_key: str | None = None  # required of every request when set
    allowed_hosts: tuple[str, ...] = ()  # Host header names served; () = loopback names, or any when listening beyond
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting for a batch; more are refused with 503
    read_timeout_s: float = 30.0  # for a request's head, and for its body

    def __post_init__(self):
        if self.max_batch_size < 1 or self.batch_wait_ms < 0 or self.default_max_tokens < 1:
            raise UserError("--max-batch-size and --max-tokens must be >= 1, --batch-wait-ms >= 0")
        if self.max_body_bytes < 1 or self.max_queue < 1 or self.read_timeout_s <= 0:
            raise UserError("--max-body-bytes and --max-queue must be >= 1, --read-timeout > 0")
        if not 0 <= self.port < 65536:
            raise UserError(f"--port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and (not self.api_key or not self.api_key.isascii() or " " in self.api_key):
            raise UserError(f"the API key (--api-key or {API_KEY_VARIABLE}) must be non-empty ASCII without spaces")
        if not Path(self.model).exists():
            raise UserError(f"--model {self.model}: no such checkpoint or folder")

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.model).resolve().name

    @property
    def host_names(self) -> tuple[str, ...]:
        """The Host header names served: `allowed_hosts`, else the default for where it listens."""
        return self.allowed_hosts or default_allowed_hosts(self.host)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err}") from err


class ChatServer:
    """uvicorn on a socket bound at construction: `start()` serves from a background thread (tests), `run()` from
    this one until Ctrl-C or SIGTERM (the command)."""

    def __init__(self, settings: ServeSettings, engine: ChatEngine):
        import uvicorn

        from rpo_jax.generate.serving_app import build_app
        from rpo_jax.generate.serving_batcher import Batcher
        from rpo_jax.generate.serving_http import json_h11_protocol

        self.settings, self.engine = settings, engine
        self.batcher = Batcher(engine, settings.max_batch_size, settings.batch_wait_ms / 1000, settings.max_queue)
        self.socket = _listen(settings.host, settings.port)
        config = uvicorn.Config(
            build_app(settings, engine, self.batcher),
            http=json_h11_protocol(settings.read_timeout_s),
            loop="asyncio",
            ws="none",
            lifespan="off",
            access_log=False,  # our own line per request (serving_security.AccessLog)
            log_config=None,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        self.uvicorn = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def run(self) -> None:
        self.batcher.start()
        try:
            self.uvicorn.run(sockets=[self.socket])
        except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl-C, then raises it again
            pass
        finally:
            self.batcher.stop()
            self.socket.close()

    def start(self) -> ChatServer:
        self.thread = threading.Thread(target=self.run, name="rpo-jax-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=GRACEFUL_S + 30)


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name, level in (("rpo_jax.serve", logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # a root handler some library set up would print each line twice


def exposure_warning(settings: ServeSettings) -> str | None:
    """What `serve` says first when it listens beyond this machine with no API key."""
    if is_loopback(settings.host) or settings.api_key is not None:
        return None
    return (
        f"WARNING: listening on {settings.host}, beyond this machine, with no API key: anyone who can reach port "
        f"{settings.port} can make this server generate. Set {API_KEY_VARIABLE} (or --api-key) and give clients the "
        f"same key (build-pairs --judge-api-key-env {API_KEY_VARIABLE})."
    )


def serve(settings: ServeSettings, mesh_cfg: MeshConfig | None = None) -> None:
    """Loads the model and serves until interrupted; prints the base URL to give `--judge-base-url` first."""
    _log_to_stderr()
    if warning := exposure_warning(settings):
        print(warning, file=sys.stderr, flush=True)
    server = ChatServer(settings, ChatEngine(settings, mesh_cfg))
    print(f"serving {settings.served_name!r} at {server.url} (--judge-base-url {server.url})", flush=True)
    print(server.engine.buckets.describe(), flush=True)
    key = f"required ({API_KEY_VARIABLE} / --api-key)" if settings.api_key else "none"
    print(
        f"limits: body {settings.max_body_bytes} bytes, {settings.max_queue} queued requests, read timeout "
        f"{settings.read_timeout_s:g} s; hosts {', '.join(settings.host_names)}; API key {key}",
        flush=True,
    )
    server.run()


def api_key_from_environment() -> str | None:
    return os.environ.get(API_KEY_VARIABLE) or None
