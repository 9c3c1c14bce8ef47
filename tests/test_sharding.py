"""Mesh construction and the logical-axis rules: unknown names, non-dividing dimensions, replication check."""

import jax
import pytest
from flax import nnx

from rpo_jax.config.schema import MeshConfig, ModelConfig
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import (
    ShardingError,
    check_sufficiently_sharded,
    init_sharded,
    logical_to_spec,
    make_mesh,
    mesh_shape,
    state_shardings,
)

SMALL = ModelConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def test_mesh_shape_resolves_remaining_devices():
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(ShardingError, match="needs 16 devices"):
        mesh_shape(MeshConfig(data=2, fsdp=4, tensor=2), 8)
    with pytest.raises(ShardingError, match="not divisible"):
        mesh_shape(MeshConfig(data=3, fsdp=-1, tensor=1), 8)


def test_unknown_logical_axis_raises():
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    with pytest.raises(ShardingError, match="'experts'"):
        logical_to_spec(("experts", "embed"), (8, 64), mesh, "moe/w")


def test_non_dividing_dimension_raises_naming_the_parameter():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    abstract = nnx.split(nnx.eval_shape(lambda: Llama(SMALL, rngs=nnx.Rngs(0))))[1]
    with pytest.raises(ShardingError, match=r"kv_heads=2 does not divide mesh axis tensor=4"):
        state_shardings(abstract, mesh)


def test_every_parameter_is_sharded_on_fsdp():
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    _, state, _ = init_sharded(lambda: Llama(SMALL, rngs=nnx.Rngs(0)), mesh, max_replicated_fraction=0.02)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = jax.tree_util.keystr(path)
        if "norm" not in name:
            assert "fsdp" in leaf.sharding.spec, name
            assert leaf.addressable_shards[0].data.size * 8 == leaf.size, name  # one shard per device, no copies


def test_replication_check_fires():
    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    abstract = nnx.split(nnx.eval_shape(lambda: Llama(SMALL, rngs=nnx.Rngs(0))))[1]
    shardings = state_shardings(abstract, mesh)
    check_sufficiently_sharded(abstract, shardings, mesh, 0.02)
    with pytest.raises(ShardingError, match="replicated"):
        check_sufficiently_sharded(abstract, shardings, mesh, 0.0)
