"""The one table that maps HF Llama tensor names to our parameters (import and export both read it).

`TENSOR_TABLE` says, for each HF tensor, which of our parameters it is and how its layout maps: the HF tensor
is viewed as `split` (each HF dim split into the listed sizes) and then transposed by `perm` into our layout
(per layer; layer tensors are stacked along our leading `layers` axis).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from rpo_jax.config.schema import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_name: str  # `{i}` = layer index for per-layer tensors
    path: tuple[str, ...]  # key path in our `nnx.to_pure_dict(state)`
    split: Callable[[ModelConfig], tuple[tuple[int, ...], ...]]  # per HF dim, the sizes it splits into
    perm: tuple[int, ...]  # transpose of the split view that gives our (per-layer) layout

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return tuple(math.prod(g) for g in self.split(cfg))

    def our_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        flat = [s for g in self.split(cfg) for s in g]
        return tuple(flat[p] for p in self.perm)


_ATTN = "model.layers.{i}.self_attn"
_MLP = "model.layers.{i}.mlp"
TENSOR_TABLE: tuple[TensorMap, ...] = (
    TensorMap("model.embed_tokens.weight", ("embed_VD",), lambda c: ((c.vocab_size,), (c.hidden_size,)), (0, 1)),
    TensorMap(
        f"{_ATTN}.q_proj.weight",
        ("layers", "wq_DHDh"),
        lambda c: ((c.num_attention_heads, c.head_dim), (c.hidden_size,)),
        (2, 0, 1),
    ),
    TensorMap(
        f"{_ATTN}.k_proj.weight",
        ("layers", "wk_DKDh"),
        lambda c: ((c.num_key_value_heads, c.head_dim), (c.hidden_size,)),
        (2, 0, 1),
    ),
    TensorMap(
        f"{_ATTN}.v_proj.weight",
        ("layers", "wv_DKDh"),
        lambda c: ((c.num_key_value_heads, c.head_dim), (c.hidden_size,)),
        (2, 0, 1),
    ),
    TensorMap(
        f"{_ATTN}.o_proj.weight",
        ("layers", "wo_HDhD"),
        lambda c: ((c.hidden_size,), (c.num_attention_heads, c.head_dim)),
        (1, 2, 0),
    ),
    TensorMap(
        f"{_MLP}.gate_proj.weight",
        ("layers", "w_gate_DF"),
        lambda c: ((c.intermediate_size,), (c.hidden_size,)),
        (1, 0),
    ),
    TensorMap(
        f"{_MLP}.up_proj.weight", ("layers", "w_up_DF"), lambda c: ((c.intermediate_size,), (c.hidden_size,)), (1, 0)
    ),
    TensorMap(
        f"{_MLP}.down_proj.weight",
        ("layers", "w_down_FD"),
        lambda c: ((c.hidden_size,), (c.intermediate_size,)),
        (1, 0),
    ),
    TensorMap(
        "model.layers.{i}.input_layernorm.weight", ("layers", "input_norm_D"), lambda c: ((c.hidden_size,),), (0,)
    ),
    TensorMap(
        "model.layers.{i}.post_attention_layernorm.weight",
        ("layers", "post_attn_norm_D"),
        lambda c: ((c.hidden_size,),),
        (0,),
    ),
    TensorMap("model.norm.weight", ("final_norm_D",), lambda c: ((c.hidden_size,),), (0,)),
    TensorMap("lm_head.weight", ("lm_head_DV",), lambda c: ((c.vocab_size,), (c.hidden_size,)), (1, 0)),
)
LM_HEAD = "lm_head.weight"


def table_for(cfg: ModelConfig) -> list[TensorMap]:
    """The table entries this config uses (no lm_head when embeddings are tied)."""
    return [t for t in TENSOR_TABLE if not (t.hf_name == LM_HEAD and cfg.tie_word_embeddings)]


def hf_tensor_names(cfg: ModelConfig) -> Iterator[tuple[str, TensorMap, int | None]]:
    """(HF name, table entry, layer index or None) for every tensor an HF folder of `cfg` holds, in HF order."""
    tables = table_for(cfg)
    for t in tables:
        if t.hf_name.startswith("model.embed"):
            yield t.hf_name, t, None
    for i in range(cfg.num_hidden_layers):
        for t in tables:
            if t.per_layer:
                yield t.hf_name.format(i=i), t, i
    for t in tables:
        if not t.per_layer and not t.hf_name.startswith("model.embed"):
            yield t.hf_name, t, None
