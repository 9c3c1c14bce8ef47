"""`rpo-jax import-hf`: HuggingFace Llama folder (config.json + safetensors) -> params checkpoint.

Each parameter is read slice by slice straight into its sharding on the mesh, then saved with Orbax.
"""

from __future__ import annotations

import argparse

from data_pipeline.local_paths import local_path_arg
from rpo_jax.config import ConfigError, LoraConfig, MeshConfig


def parse_mesh(text: str) -> MeshConfig:
    """`data=1,fsdp=-1,tensor=1` -> MeshConfig (omitted axes keep their defaults)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in ("data", "fsdp", "tensor"):
            raise argparse.ArgumentTypeError(f"{part!r} must look like data=N, fsdp=N or tensor=N")
        try:
            sizes[name] = int(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{name}={value!r} is not an integer") from e
    try:
        return MeshConfig(**sizes)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"{e}") from e


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=local_path_arg,
                        help="HF folder with config.json and *.safetensors")
    parser.add_argument("--output", required=True, type=local_path_arg,
                        help="new params checkpoint folder (must not exist)")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None,
                        help="stored dtype (default: the HF config's dtype/torch_dtype, else float32)")
    parser.add_argument("--mesh", type=parse_mesh, default=MeshConfig(),
                        help="device mesh to load onto, e.g. data=1,fsdp=-1,tensor=1 (the default)")


def run(args: argparse.Namespace) -> int:
    from rpo_jax.hf_io import load_hf_state
    from rpo_jax.model import count_params
    from rpo_jax.params_io import save_params
    from rpo_jax.sharding import make_mesh

    mesh = make_mesh(args.mesh)
    cfg, state = load_hf_state(args.model, mesh, param_dtype=args.param_dtype)
    path = save_params(args.output, state, cfg, LoraConfig())
    print(f"imported {args.model}: {count_params(cfg):,} parameters ({cfg.param_dtype}) "
          f"on mesh {dict(mesh.shape)} -> {path}")
    return 0
