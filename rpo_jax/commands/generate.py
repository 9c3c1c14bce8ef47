"""`rpo-jax generate`: sample N responses per prompt with the KV-cache sampler (see `rpo_jax.generate.generation`)."""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=local_path_arg,
        help="params checkpoint (import-hf / import-gguf) or HF Llama folder (e.g. a run's hf/)",
    )
    parser.add_argument(
        "--tokenizer", required=True, type=local_path_arg, help="HF tokenizer folder (with its chat template)"
    )
    parser.add_argument(
        "--prompts",
        required=True,
        type=local_path_arg,
        help="JSONL with `key` and `prompt`, `messages` or `user_turns` (a conversation, answered turn by turn)",
    )
    parser.add_argument("--output", required=True, type=local_path_arg, help="responses JSONL to write")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off: every token)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens generated per response")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences decoded together")
    parser.add_argument(
        "--stop", action="append", default=[], help="stop string (repeatable), cut on the host (default: none)"
    )
    parser.add_argument("--raw-prompt", action="store_true", help="tokenize `prompt` without the chat template")
    parser.add_argument("--no-lora", action="store_true", help="sample from the base weights of a LoRA checkpoint")
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.generate.generation import GenerationSettings, generate_responses

    settings = GenerationSettings(
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        stop=tuple(args.stop),
        raw_prompt=args.raw_prompt,
        use_lora=not args.no_lora,
    )
    summary = generate_responses(
        args.checkpoint, args.tokenizer, args.prompts, args.output, settings, mesh_from_args(args)
    )
    print(
        f"wrote {summary['responses']} responses to {args.output}; finish reasons {summary['finish_reasons']}; "
        f"{summary['tokens_per_s']:.1f} generated tokens/s"
    )
    return 0
