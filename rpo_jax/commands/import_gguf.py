"""`rpo-jax import-gguf`: GGUF Llama file (llama.cpp) -> params checkpoint, via a HuggingFace folder.

The GGUF tensors are dequantized to fp32 and written as an HF folder (`rpo_jax.io.gguf.gguf_to_hf`), which is
then imported exactly like `import-hf`. The HF folder (with the tokenizer and chat template from the GGUF
metadata) is kept at `--hf-output` when given (pass it to `generate --tokenizer`), otherwise deleted.
"""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from data_pipeline.storage import storage_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gguf", required=True, type=local_path_arg, help="llama.cpp GGUF file of a Llama model")
    parser.add_argument(
        "--output",
        required=True,
        type=storage_path_arg,
        help="new params checkpoint folder, local or gs:// (must not exist)",
    )
    parser.add_argument(
        "--hf-output",
        default=None,
        type=local_path_arg,
        help="also keep the converted HF folder (config, fp32 safetensors, tokenizer) here (default: not kept)",
    )
    parser.add_argument(
        "--param-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="stored dtype of the checkpoint (the dequantized weights are fp32)",
    )
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.io.params import import_gguf
    from rpo_jax.model.llama import count_params
    from rpo_jax.runtime.sharding import make_mesh

    mesh = make_mesh(mesh_from_args(args))
    cfg, path = import_gguf(args.gguf, args.output, mesh, param_dtype=args.param_dtype, hf_output=args.hf_output)
    kept = f"; HF folder kept at {args.hf_output}" if args.hf_output else ""
    print(
        f"imported {args.gguf}: {count_params(cfg):,} parameters ({cfg.param_dtype}) "
        f"on mesh {dict(mesh.shape)} -> {path}{kept}"
    )
    return 0
