"""`validate_batch`: host-side checks of a batch before it reaches the jitted step, each error naming the field."""

import numpy as np
import pytest

from rpo_jax.config.schema import LOSS_TYPES, ConfigError, LossConfig
from rpo_jax.objective.losses import LOSSES
from rpo_jax.train.batch_checks import BatchError, validate_batch


def valid_batch(B=3, G=2, L=10):
    tokens = np.full((B, G, L), 5, np.int32)
    loss_mask = np.zeros((B, G, L), np.int32)
    loss_mask[..., 4:8] = 1
    segment_ids = np.zeros((B, G, L), np.int32)
    segment_ids[..., :8] = 1
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (B, G, L)).copy()
    return {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
        "margin": np.full((B,), 3, np.int32),
        "ref_logps": np.full((B, G), -10.0, np.float32),
    }


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


@pytest.mark.parametrize(
    "batch,cfg,kwargs,match",
    [
        (valid_batch(), LossConfig(loss_type=("iopo",)), {}, r"'iopo' needs G=4 .* G=2"),
        (valid_batch(G=4), LossConfig(loss_type=("rpo",)), {}, r"'rpo' needs G=2 .* G=4"),
        (
            _broken(_set("loss_mask", (2, 1), 0)),
            LossConfig(),
            {},
            r"batch.loss_mask: example 2, sequence 1 \(rejected\)",
        ),
        (_broken(_set("ref_logps", (1, 0), np.nan)), LossConfig(), {}, r"batch.ref_logps: non-finite .* \(1, 0\)"),
        (_broken(_set("ref_logps", (0, 1), np.inf)), LossConfig(), {}, r"batch.ref_logps: non-finite"),
        (
            _broken(lambda b: b.pop("ref_logps")),
            LossConfig(),
            {"require_ref_logps": True},
            r"batch.ref_logps is missing",
        ),
        (_broken(lambda b: b.pop("margin")), LossConfig(), {}, r"batch.margin is missing"),
        (_broken(_set("margin", 1, -2)), LossConfig(), {}, r"batch.margin: example 1"),
        (_broken(_set("loss_mask", (0, 0, 0), 1)), LossConfig(), {}, r"scores position 0"),
        (_broken(_set("loss_mask", (1, 1, 9), 1)), LossConfig(), {}, r"example 1, sequence 1 scores padding"),
        (_broken(lambda b: b.update(positions=b["positions"][..., :5])), LossConfig(), {}, r"batch.positions: shape"),
        (
            _broken(lambda b: b.update(example_weight=np.array([1.0, 0.5, 0.0], np.float32))),
            LossConfig(),
            {},
            r"batch.example_weight: expected 0/1",
        ),
        (
            _broken(lambda b: b.update(example_weight=np.zeros(3, np.float32))),
            LossConfig(),
            {},
            r"batch.example_weight: .*at least one 1",
        ),
    ],
)
def test_validate_batch_errors(batch, cfg, kwargs, match):
    with pytest.raises(BatchError, match=match):
        validate_batch(batch, cfg, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta": 0.0}, "loss.beta must be > 0"),
        ({"loss_type": ("dpo",)}, "loss.loss_type: unknown loss 'dpo'"),
        ({"loss_type": ()}, "loss.loss_type is empty"),
        ({"loss_type": ("rpo", "sft")}, "loss.loss_weights has 1 entries for 2 loss_type"),
        ({"loss_type": ("hinge",), "label_smoothing": 0.1}, "loss.label_smoothing"),
    ],
)
def test_loss_settings_are_checked_once_when_the_config_is_built(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LossConfig(**kwargs)


def test_the_config_names_exactly_the_registered_losses():
    assert set(LOSS_TYPES) == set(LOSSES)
