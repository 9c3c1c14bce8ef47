"""`validate_batch`: host-side checks of a batch before it reaches the jitted step, each error naming the field."""

import dataclasses

import numpy as np
import pytest

from rpo_jax.batch_checks import BatchError, validate_batch
from rpo_jax.config import ConfigError, LossConfig


def valid_batch(B=3, G=2, L=10):
    tokens = np.full((B, G, L), 5, np.int32)
    loss_mask = np.zeros((B, G, L), np.int32)
    loss_mask[..., 4:8] = 1
    segment_ids = np.zeros((B, G, L), np.int32)
    segment_ids[..., :8] = 1
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, G, L)).copy()
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions,
            "margin": np.full((B,), 3, np.int32), "ref_logps": np.full((B, G), -10.0, np.float32)}


def test_validate_batch_accepts_good_batches():
    validate_batch(valid_batch(), LossConfig(loss_type=("rpo",)), require_ref_logps=True)
    validate_batch(valid_batch(G=4), LossConfig(loss_type=("iopo", "sft"), loss_weights=(1.0, 0.1)))
    simpo_batch = valid_batch()
    del simpo_batch["ref_logps"]
    validate_batch(simpo_batch, LossConfig(loss_type=("simpo",)), require_ref_logps=True)


def _broken(change):
    batch = valid_batch()
    change(batch)
    return batch


def _set(name, index, value):
    def change(batch):
        batch[name][index] = value
    return change


@pytest.mark.parametrize("batch,cfg,kwargs,match", [
    (valid_batch(), LossConfig(loss_type=("dpo",)), {}, r"loss.loss_type: unknown loss 'dpo'"),
    (valid_batch(), LossConfig(loss_type=("iopo",)), {}, r"'iopo' needs G=4 .* G=2"),
    (valid_batch(G=4), LossConfig(loss_type=("rpo",)), {}, r"'rpo' needs G=2 .* G=4"),
    (_broken(_set("loss_mask", (2, 1), 0)), LossConfig(), {}, r"batch.loss_mask: example 2, sequence 1 \(rejected\)"),
    (_broken(_set("ref_logps", (1, 0), np.nan)), LossConfig(), {}, r"batch.ref_logps: non-finite .* \(1, 0\)"),
    (_broken(_set("ref_logps", (0, 1), np.inf)), LossConfig(), {}, r"batch.ref_logps: non-finite"),
    (_broken(lambda b: b.pop("ref_logps")), LossConfig(), {"require_ref_logps": True}, r"batch.ref_logps is missing"),
    (_broken(lambda b: b.pop("margin")), LossConfig(), {}, r"batch.margin is missing"),
    (_broken(_set("margin", 1, -2)), LossConfig(), {}, r"batch.margin: example 1"),
    (_broken(_set("loss_mask", (0, 0, 0), 1)), LossConfig(), {}, r"scores position 0"),
    (_broken(_set("loss_mask", (1, 1, 9), 1)), LossConfig(), {}, r"example 1, sequence 1 scores padding"),
    (_broken(lambda b: b.update(positions=b["positions"][..., :5])), LossConfig(), {}, r"batch.positions: shape"),
    (valid_batch(), LossConfig(loss_type=("hinge",), label_smoothing=0.1), {}, r"loss.label_smoothing"),
    (_broken(lambda b: b.update(example_weight=np.array([1.0, 0.5, 0.0], np.float32))), LossConfig(), {},
     r"batch.example_weight: expected 0/1"),
    (_broken(lambda b: b.update(example_weight=np.zeros(3, np.float32))), LossConfig(), {},
     r"batch.example_weight: .*at least one 1"),
])
def test_validate_batch_errors(batch, cfg, kwargs, match):
    with pytest.raises(BatchError, match=match):
        validate_batch(batch, cfg, **kwargs)


def test_validate_batch_rejects_nonpositive_beta():
    with pytest.raises(ConfigError, match="loss.beta"):
        LossConfig(beta=0.0)
    cfg = LossConfig()
    object.__setattr__(cfg, "beta", 0.0)  # a config that bypassed its own checks
    with pytest.raises(BatchError, match="loss.beta must be > 0"):
        validate_batch(valid_batch(), cfg)
    assert dataclasses.asdict(LossConfig())["beta"] == 0.1
