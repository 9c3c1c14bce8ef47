"""`rpo-jax import-hf`: HuggingFace Llama folder (config.json + safetensors) -> params checkpoint.

Each parameter is read slice by slice straight into its sharding on the mesh, then saved with Orbax.
"""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from data_pipeline.storage import storage_path_arg
from rpo_jax.config.loading import add_mesh_argument, mesh_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=local_path_arg, help="HF folder with config.json and *.safetensors"
    )
    parser.add_argument(
        "--output",
        required=True,
        type=storage_path_arg,
        help="new params checkpoint folder, local or gs:// (must not exist)",
    )
    parser.add_argument(
        "--param-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="stored dtype (default: the HF config's dtype/torch_dtype, else float32)",
    )
    add_mesh_argument(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.io.params import import_hf
    from rpo_jax.model.llama import count_params
    from rpo_jax.runtime.sharding import make_mesh

    mesh = make_mesh(mesh_from_args(args))
    cfg, path = import_hf(args.model, args.output, mesh, param_dtype=args.param_dtype)
    print(
        f"imported {args.model}: {count_params(cfg):,} parameters ({cfg.param_dtype}) "
        f"on mesh {dict(mesh.shape)} -> {path}"
    )
    return 0
