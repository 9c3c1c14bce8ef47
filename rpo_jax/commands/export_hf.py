"""`rpo-jax export-hf`: params checkpoint or training step checkpoint -> HuggingFace Llama folder (LoRA merged)."""

from __future__ import annotations

import argparse
import re

from data_pipeline.files import local_path_arg
from data_pipeline.storage import storage_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """`5GB`, `500MiB`, `1000000` -> bytes (decimal units as HF's `max_shard_size`)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} must look like 5GB, 500MiB or 1000000")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=storage_path_arg,
        help="params checkpoint folder (import-hf, import-gguf) or a training step checkpoint "
        "(<output_dir>/checkpoints/<step>)",
    )
    parser.add_argument(
        "--output", required=True, type=storage_path_arg, help="new HF folder, local or gs:// (must not exist)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        type=local_path_arg,
        help="folder whose tokenizer/generation files are copied (default: none for a params checkpoint; the "
        "run's tokenizer, chat template and generation config for a step checkpoint)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="safetensors dtype (default: the checkpoint's param_dtype)",
    )
    parser.add_argument(
        "--max-shard-size",
        type=parse_size,
        default=parse_size("5GB"),
        help="largest safetensors file (e.g. 5GB, 500MiB); more than one adds model.safetensors.index.json",
    )
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.runtime.sharding import make_mesh
    from rpo_jax.train.checkpoint_export import export_checkpoint

    files, lora_cfg = export_checkpoint(
        args.checkpoint,
        args.output,
        make_mesh(mesh_from_args(args)),
        dtype=args.dtype,
        max_shard_bytes=args.max_shard_size,
        tokenizer_dir=args.tokenizer,
    )
    merged = f", LoRA rank {lora_cfg.rank} merged" if lora_cfg.rank else ""
    print(f"exported {args.checkpoint} -> {args.output}{merged}: {', '.join(files)}")
    return 0
