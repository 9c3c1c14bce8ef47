"""`rpo-jax serve`: an OpenAI-compatible chat server on the KV-cache sampler (see `rpo_jax.generate.serving`), e.g. the
local LLM judge of `build-pairs --judge-base-url http://127.0.0.1:PORT/v1 --judge-model NAME`."""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arg = parser.add_argument
    arg("--model", required=True, type=local_path_arg, help="params checkpoint or HF Llama folder")
    arg("--tokenizer", type=local_path_arg, help="tokenizer folder with a chat template (default: --model)")
    arg("--host", default="127.0.0.1", help="address to listen on")
    arg("--port", type=int, default=8000, help="port to listen on (0: any free port, printed)")
    arg("--model-name", help="the `model` clients send (default: the --model folder's name)")
    arg("--max-batch-size", type=int, default=8, help="sequences decoded together")
    arg("--batch-wait-ms", type=float, default=20.0, help="how long a batch waits for more requests")
    arg("--max-tokens", type=int, default=512, help="max_tokens of a request that gives none")
    arg("--seed", type=int, default=0, help="PRNG seed of sampled (temperature > 0) requests")
    arg("--no-lora", action="store_true", help="serve the base weights of a LoRA checkpoint")
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.generate.serving import ServeSettings, serve

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
    )
    serve(settings, mesh_from_args(args))
    return 0
