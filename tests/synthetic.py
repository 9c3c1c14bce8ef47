"""Synthetic `[B, G, L]` preference batches and tiny configs for step-level tests (no tokenizer needed)."""

from __future__ import annotations

import numpy as np

from rpo_jax.config.loading import config_from_dict
from rpo_jax.config.schema import Config

TINY_MODEL = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-5,
)


def tiny_config(**sections) -> Config:
    """Config with the tiny model; `sections` are nested dicts merged over it, e.g. loss={"beta": 0.2}."""
    raw = {
        "model": dict(TINY_MODEL),
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "loss": {"logits_chunk_size": 8},
        "optim": {"learning_rate": 1e-3, "warmup_ratio": 0.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def make_batch(B: int, G: int, L: int, vocab: int, seed: int = 0, *, with_ref: bool = False) -> dict:
    """Right-padded rows: a prompt, then a scored response, then padding; lengths differ per row."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(B, G, L), dtype=np.int32)
    loss_mask = np.zeros((B, G, L), bool)
    segment_ids = np.zeros((B, G, L), np.int32)
    positions = np.zeros((B, G, L), np.int32)
    for b in range(B):
        prompt = int(rng.integers(2, L // 3))
        for g in range(G):
            length = int(rng.integers(prompt + 2, L + 1))
            segment_ids[b, g, :length] = 1
            positions[b, g, :length] = np.arange(length)
            loss_mask[b, g, prompt:length] = True
            tokens[b, g, length:] = 0
            tokens[b, g, :prompt] = tokens[b, 0, :prompt]  # the group shares its prompt
    batch = {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
        "margin": rng.integers(0, 5, size=(B,), dtype=np.int32),
    }
    if with_ref:
        batch["ref_logps"] = -rng.uniform(10.0, 40.0, size=(B, G)).astype(np.float32)
    return batch
