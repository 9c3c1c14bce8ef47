"""`rpo-jax import-gguf`: GGUF Llama file (llama.cpp) -> params checkpoint, via a HuggingFace folder.

The GGUF tensors are dequantized to fp32 and written as an HF folder (`rpo_jax.gguf_io.gguf_to_hf`), which is
then imported exactly like `import-hf`. The HF folder (with the tokenizer and chat template from the GGUF
metadata) is kept at `--hf-output` when given (pass it to `generate --tokenizer`), otherwise deleted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from data_pipeline.local_paths import local_path_arg
from rpo_jax.commands.import_hf import parse_mesh
from rpo_jax.config import LoraConfig, MeshConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gguf", required=True, type=local_path_arg, help="llama.cpp GGUF file of a Llama model")
    parser.add_argument("--output", required=True, type=local_path_arg,
                        help="new params checkpoint folder (must not exist)")
    parser.add_argument("--hf-output", default=None, type=local_path_arg,
                        help="also keep the converted HF folder (config, fp32 safetensors, tokenizer) here")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="stored dtype of the checkpoint (the dequantized weights are fp32)")
    parser.add_argument("--mesh", type=parse_mesh, default=MeshConfig(),
                        help="device mesh to load onto, e.g. data=1,fsdp=-1,tensor=1 (the default)")


def run(args: argparse.Namespace) -> int:
    from rpo_jax.gguf_io import gguf_to_hf
    from rpo_jax.hf_io import load_hf_state
    from rpo_jax.model import count_params
    from rpo_jax.params_io import save_params
    from rpo_jax.sharding import make_mesh

    if Path(args.output).exists():
        raise FileExistsError(f"{args.output}: already exists; refusing to overwrite")
    scratch = None
    if args.hf_output:
        hf_dir = Path(args.hf_output)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="rpo_jax_gguf_"))
        hf_dir = scratch / "hf"
    try:
        gguf_to_hf(args.gguf, hf_dir)
        mesh = make_mesh(args.mesh)
        cfg, state = load_hf_state(hf_dir, mesh, param_dtype=args.param_dtype)
        path = save_params(args.output, state, cfg, LoraConfig())
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    kept = f"; HF folder kept at {hf_dir}" if args.hf_output else ""
    print(f"imported {args.gguf}: {count_params(cfg):,} parameters ({cfg.param_dtype}) "
          f"on mesh {dict(mesh.shape)} -> {path}{kept}")
    return 0
