"""Per-sequence log-probs of packed rows (`data.packing`), returned in the unpacked `[B, G]` layout.

A packed batch (`data_pipeline.records.packing`) has rows `[R, L]` holding whole preference groups, each token
tagged with its segment, its prefix segment (shared prompts), its position and its sequence slot `s = j·G + g`
(example slot j of the row, sequence g). One forward over the R rows gives hidden states; `logps.score_hidden`
sums each scored token's log-prob into its slot, `[R, J·G]`, reshaped to `[R·J, G]`: example slots play the
role of the batch axis, and empty slots (weight 0) carry zeros. Next-token scoring stays exact because every
sequence's tokens, including the prompt token that predicts its first response token, are its own
(`packing` repeats the prompt's last token in each branch).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.model.llama import Llama
from rpo_jax.objective.logps import SequenceScores, paired_logps, score_hidden
from rpo_jax.runtime.sharding import BATCH_AXES

PACKED_MODEL_FIELDS = ("tokens", "loss_mask", "segment_ids", "positions", "sequence_ids", "scored_tokens")


def is_packed(batch: Mapping) -> bool:
    """Packed rows are `[R, L]`; unpacked batches `[B, G, L]`."""
    return jnp.ndim(batch["tokens"]) == 2


def packed_logps(
    model: Llama,
    batch: Mapping[str, jax.Array],
    *,
    logits_chunk_size: int,
    vocab_chunk_size: int = 0,
    use_lora: bool = True,
    lora_dropout_rng: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> SequenceScores:
    """`SequenceScores` `[R·J, G]` of a packed batch (see the module docstring; mesh handling as `paired_logps`)."""
    R, J, G = batch["scored_tokens"].shape
    # Only shared-prompt rows carry `prefix_ids`: plain packed rows need just segment ids (cudnn and splash too).
    h_RLD = model(
        batch["tokens"],
        batch["positions"],
        batch["segment_ids"],
        return_hidden=True,
        use_lora=use_lora,
        lora_dropout_rng=lora_dropout_rng,
        mesh=mesh,
        prefix_ids_BL=batch.get("prefix_ids"),
        max_segments=2 * J * G,
    )
    lm_head_DV = model.lm_head_weight()
    if mesh is not None:
        lm_head_DV = jax.lax.with_sharding_constraint(lm_head_DV, NamedSharding(mesh, PartitionSpec()))
        h_RLD = jax.lax.with_sharding_constraint(h_RLD, NamedSharding(mesh, PartitionSpec(BATCH_AXES, None, None)))
    scores = score_hidden(
        h_RLD,
        batch["tokens"],
        batch["loss_mask"],
        lm_head_DV,
        logits_chunk_size=logits_chunk_size,
        vocab_chunk_size=vocab_chunk_size,
        sequence_ids_NL=batch["sequence_ids"],
        num_slots=J * G,
    )
    return SequenceScores(*(x.reshape(R * J, G) for x in scores))


def sequence_logps(model: Llama, batch: Mapping[str, jax.Array], **kwargs) -> SequenceScores:
    """`[B, G]` scores of an unpacked batch (`paired_logps`) or `[R·J, G]` of a packed one (`packed_logps`)."""
    return packed_logps(model, batch, **kwargs) if is_packed(batch) else paired_logps(model, batch, **kwargs)


def group_fields(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """(margin [B], example_weight [B] or None, ref_logps [B, G] or None) with packed slots flattened to B = R·J."""
    weight, ref = batch.get("example_weight"), batch.get("ref_logps")
    if not is_packed(batch):
        return batch["margin"], weight, ref
    G = batch["scored_tokens"].shape[-1]
    return (
        batch["margin"].reshape(-1),
        weight.reshape(-1),
        None if ref is None else ref.reshape(-1, G),
    )
