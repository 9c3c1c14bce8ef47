"""Tiny HF Llama folders for import/export tests: real `transformers` models, hand-made safetensors, or one of
our random models saved both as a params checkpoint and as an HF folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from rpo_jax.config.schema import LoraConfig, MeshConfig, ModelConfig, RopeConfig
from rpo_jax.io.hf_config import model_config_to_hf
from rpo_jax.io.hf_export import export_hf
from rpo_jax.io.hf_table import hf_tensor_names
from rpo_jax.runtime.sharding import make_mesh

LLAMA3_ROPE = RopeConfig(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def tiny_config(*, gqa: bool = True, tied: bool = False, llama3_rope: bool = False, **overrides) -> ModelConfig:
    fields = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2 if gqa else 4,
        head_dim=16,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        rope_parameters=LLAMA3_ROPE if llama3_rope else RopeConfig(),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def one_device_mesh():
    return make_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])


def save_torch_llama(cfg: ModelConfig, path: Path, seed: int = 0, max_shard_size: str | None = None):
    """Builds `transformers.LlamaForCausalLM` for `cfg` (random, fp32, eval) and saves it as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**model_config_to_hf(cfg, "float32"))).eval()
    with torch.no_grad():  # HF initialises norms to 1; random norms make the test see a swapped norm
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return model


def torch_logits(model, tokens_BL: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.asarray(tokens_BL, np.int64))).logits.float().numpy()


def write_numpy_llama(
    cfg: ModelConfig,
    path: Path,
    *,
    drop: str | None = None,
    extra: str | None = None,
    reshape: str | None = None,
    config_changes: dict | None = None,
) -> Path:
    """A hand-made HF folder (no torch), optionally broken: a tensor dropped, added or given a wrong shape."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, t, _ in hf_tensor_names(cfg):
        shape = t.hf_shape(cfg)
        if name == reshape:
            shape = (shape[0] + 1, *shape[1:])
        tensors[name] = rng.standard_normal(shape).astype(np.float32)
    if drop:
        del tensors[drop]
    if extra:
        tensors[extra] = np.zeros((3,), np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    raw = model_config_to_hf(cfg, "float32")
    raw.update(config_changes or {})
    (path / "config.json").write_text(json.dumps(raw))
    return path


def params_and_hf_folder(cfg: ModelConfig, path: Path, seed: int = 0, tokenizer_dir: Path | None = None):
    """A random Llama saved twice, as params checkpoint `path/ckpt` and as HF folder `path/hf` (as a run's
    export: tokenizer files copied from `tokenizer_dir`). Returns (ckpt, hf, its parameters as a pure dict)."""
    from flax import nnx

    from rpo_jax.io.params import save_params
    from rpo_jax.model.llama import Llama

    state = nnx.state(Llama(cfg, rngs=nnx.Rngs(seed)))
    save_params(path / "ckpt", state, cfg, LoraConfig())
    export_hf(state, cfg, LoraConfig(), path / "hf", tokenizer_dir=tokenizer_dir)
    return path / "ckpt", path / "hf", nnx.to_pure_dict(state)
