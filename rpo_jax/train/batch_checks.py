"""Host-side checks of a numpy batch against the loss configuration, run before anything is compiled.

A bad batch would otherwise train silently on garbage (a row with no scored token gives n = 0 and a NaN IPO loss;
a G=2 batch fed to IOPO indexes out of range), so each problem raises `BatchError` naming the field and example.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rpo_jax.config.schema import LossConfig
from rpo_jax.objective.losses import LOSSES, needs_reference

ROW_NAMES = {2: ("chosen", "rejected"), 4: ("x1,y1", "x1,y2", "x2,y2", "x2,y1")}


class BatchError(ValueError):
    """A batch or loss configuration that the losses cannot be computed on."""


def check_group_size(cfg: LossConfig, group_size: int) -> None:
    """The group size each selected loss needs (the loss settings themselves are checked by `LossConfig`)."""
    for name in cfg.loss_type:
        need = LOSSES[name].group_size
        if need is not None and need != group_size:
            raise BatchError(
                f"loss.loss_type {name!r} needs G={need} sequences per group, but batch.tokens has G={group_size}"
            )
    if group_size not in ROW_NAMES:
        raise BatchError(f"batch.tokens: G={group_size} sequences per group; expected 2 (pairs) or 4 (IOPO)")


def _require(batch: Mapping, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if name not in batch:
        raise BatchError(f"batch.{name} is missing")
    arr = np.asarray(batch[name])
    if arr.shape != shape:
        raise BatchError(f"batch.{name}: shape {arr.shape}, expected {shape}")
    if kind == "int" and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise BatchError(f"batch.{name}: dtype {arr.dtype}, expected an integer or bool type")
    if kind == "float":
        if not np.issubdtype(arr.dtype, np.floating):
            raise BatchError(f"batch.{name}: dtype {arr.dtype}, expected a float type")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise BatchError(
                f"batch.{name}: non-finite value {arr[tuple(bad[0])]} at index {tuple(bad[0].tolist())}"
                f" ({len(bad)} in total)"
            )
    return arr


def validate_batch(batch: Mapping[str, np.ndarray], loss_cfg: LossConfig, *, require_ref_logps: bool = False) -> None:
    """Raises `BatchError` on the first problem; `require_ref_logps` is True in precomputed-reference mode."""
    if "tokens" not in batch:
        raise BatchError("batch.tokens is missing")
    tokens = np.asarray(batch["tokens"])
    if tokens.ndim != 3:
        raise BatchError(f"batch.tokens: expected [B, G, L], got shape {tokens.shape}")
    B, G, L = tokens.shape
    check_group_size(loss_cfg, G)
    _require(batch, "tokens", (B, G, L), "int")
    loss_mask = _require(batch, "loss_mask", (B, G, L), "int") != 0
    segment_ids = _require(batch, "segment_ids", (B, G, L), "int")
    _require(batch, "positions", (B, G, L), "int")
    margin = _require(batch, "margin", (B,), "int")
    if (margin < 0).any():
        b = int(np.argmax(margin < 0))
        raise BatchError(f"batch.margin: example {b} has negative margin {int(margin[b])}")

    if "example_weight" in batch:
        weight = _require(batch, "example_weight", (B,), "float")
        if not np.isin(weight, (0.0, 1.0)).all() or not weight.any():
            raise BatchError(f"batch.example_weight: expected 0/1 values with at least one 1, got {weight.tolist()}")

    rows = ROW_NAMES[G]
    empty = np.argwhere(loss_mask.sum(axis=2) == 0)
    if empty.size:
        b, g = (int(i) for i in empty[0])
        raise BatchError(
            f"batch.loss_mask: example {b}, sequence {g} ({rows[g]}) scores no token "
            f"({len(empty)} such rows); every response needs at least its end-of-turn token"
        )
    first = np.argwhere(loss_mask[:, :, 0])
    if first.size:
        b, g = (int(i) for i in first[0])
        raise BatchError(f"batch.loss_mask: example {b}, sequence {g} scores position 0, which no logit predicts")
    on_padding = np.argwhere(loss_mask & (segment_ids == 0))
    if on_padding.size:
        b, g, t = (int(i) for i in on_padding[0])
        raise BatchError(
            f"batch.loss_mask: example {b}, sequence {g} scores padding (segment_ids == 0) at position {t}"
        )

    if "ref_logps" in batch:
        ref = _require(batch, "ref_logps", (B, G), "float")
        positive = np.argwhere(ref > 0)
        if positive.size:
            b, g = (int(i) for i in positive[0])
            raise BatchError(f"batch.ref_logps: example {b}, sequence {g} has log-prob {ref[b, g]} > 0")
    elif require_ref_logps and needs_reference(loss_cfg):
        raise BatchError(
            f"batch.ref_logps is missing: precomputed reference mode with loss.loss_type {list(loss_cfg.loss_type)}"
        )
    for name, value in batch.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = tuple(np.argwhere(~np.isfinite(arr))[0].tolist())
            raise BatchError(f"batch.{name}: non-finite value at index {bad}")


def validate_packed_batch(
    batch: Mapping[str, np.ndarray], loss_cfg: LossConfig, *, require_ref_logps: bool = False
) -> None:
    """Packed rows (`data_pipeline.records.packing`): the per-slot fields agree with the rows, every sequence of a
    real example scores a token, and the unpacked checks hold for the flattened slots."""
    tokens = np.asarray(batch["tokens"])
    scored = np.asarray(batch["scored_tokens"])
    if tokens.ndim != 2 or scored.ndim != 3:
        raise BatchError(f"packed batch: tokens {tokens.shape} must be [R, L], scored_tokens {scored.shape} [R, J, G]")
    R, J, G = scored.shape
    check_group_size(loss_cfg, G)
    for name in ("loss_mask", "segment_ids", "positions", "sequence_ids", "prefix_ids"):
        if name in batch or name != "prefix_ids":
            _require(batch, name, tokens.shape, "int")
    margin = _require(batch, "margin", (R, J), "int")
    weight = _require(batch, "example_weight", (R, J), "float")
    if not np.isin(weight, (0.0, 1.0)).all() or not weight.any():
        raise BatchError("batch.example_weight: expected 0/1 slot weights with at least one 1")
    if (margin < 0).any():
        raise BatchError(f"batch.margin: negative margin {int(margin.min())}")
    live = weight[..., None] > 0
    if (live & (scored == 0)).any():
        r, j, g = (int(i) for i in np.argwhere(live & (scored == 0))[0])
        raise BatchError(f"batch.scored_tokens: row {r}, slot {j}, sequence {g} ({ROW_NAMES[G][g]}) scores no token")
    seq, mask = np.asarray(batch["sequence_ids"]), np.asarray(batch["loss_mask"]) != 0
    disagree = "batch.loss_mask / sequence_ids: scored tokens disagree with scored_tokens per sequence"
    if (mask & (seq < 0)).any():
        raise BatchError(disagree)
    counted = np.stack([np.bincount(s[m], minlength=J * G) for s, m in zip(seq, mask, strict=True)])
    if not np.array_equal(counted.reshape(R, J, G), scored):
        raise BatchError(disagree)
    if mask[:, 0].any():
        raise BatchError("batch.loss_mask: a row scores position 0, which no logit predicts")
    if "ref_logps" in batch:
        ref = _require(batch, "ref_logps", (R, J, G), "float")
        if (ref > 0).any():
            raise BatchError(f"batch.ref_logps: log-prob {float(ref.max())} > 0")
    elif require_ref_logps and needs_reference(loss_cfg):
        raise BatchError("batch.ref_logps is missing: precomputed reference mode")
