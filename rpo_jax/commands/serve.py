"""`rpo-jax serve`: an OpenAI-compatible chat server on the KV-cache sampler (see `rpo_jax.generate.serving`), e.g. the
local LLM judge of `build-pairs --judge-base-url http://127.0.0.1:PORT/v1 --judge-model NAME`."""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args

EPILOG = """On a pod, to be reached from other hosts: set RPO_JAX_API_KEY (every request must then send
'Authorization: Bearer <key>'; build-pairs sends it with --judge-api-key-env RPO_JAX_API_KEY) and listen with
--host 0.0.0.0 (without a key the server warns that anyone who can reach the port can use it). Listening on
127.0.0.1 (the default), only requests whose Host header is a loopback name are served, so web pages cannot reach
it through DNS rebinding; requests with a browser Origin are refused unless --allowed-hosts names its host."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    arg = parser.add_argument
    arg("--model", required=True, type=local_path_arg, help="params checkpoint or HF Llama folder")
    arg("--tokenizer", type=local_path_arg, help="tokenizer folder with a chat template (default: --model)")
    arg("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set an API key)")
    arg("--port", type=int, default=8000, help="port to listen on (0: any free port, printed)")
    arg("--model-name", help="the `model` clients send (default: the --model folder's name)")
    arg("--api-key", help="key every request must send as a Bearer token (default: $RPO_JAX_API_KEY; none if unset)")
    hosts_help = "comma-separated Host header names served, '*' for any (default: loopback names, or '*' beyond)"
    arg("--allowed-hosts", help=hosts_help)
    arg("--max-batch-size", type=int, default=8, help="sequences decoded together")
    arg("--batch-wait-ms", type=float, default=20.0, help="how long a batch waits for more requests")
    arg("--max-tokens", type=int, default=512, help="max_tokens of a request that gives none")
    arg("--max-queue", type=int, default=64, help="requests waiting for a batch; more get 503 with Retry-After")
    arg("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    arg("--read-timeout", type=float, default=30.0, help="seconds to receive a request's head, and its body (408)")
    arg("--seed", type=int, default=0, help="PRNG seed of sampled (temperature > 0) requests")
    arg("--no-lora", action="store_true", help="serve the base weights of a LoRA checkpoint")
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.generate.serving import ServeSettings, api_key_from_environment, serve

    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()) if args.allowed_hosts else ()
    settings = ServeSettings(
        model=args.model,
        tokenizer=args.tokenizer,
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        default_max_tokens=args.max_tokens,
        seed=args.seed,
        use_lora=not args.no_lora,
        api_key=args.api_key if args.api_key is not None else api_key_from_environment(),
        allowed_hosts=hosts,
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
        read_timeout_s=args.read_timeout,
    )
    serve(settings, mesh_from_args(args))
    return 0
