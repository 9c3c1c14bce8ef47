"""Multislice meshes (`mesh.dcn_data`): data parallel across slices, fsdp/tensor inside one, on the 8 simulated CPU
devices with fake slices (CPU devices have no `slice_index`, so `make_mesh` is given `slice_of`)."""

import json
import math
import re
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import yaml
from synthetic import TINY_MODEL, make_batch, tiny_config

from rpo_jax.cli import main as cli_main
from rpo_jax.config.loading import load_config, parse_mesh_sizes
from rpo_jax.config.schema import ConfigError, MeshConfig
from rpo_jax.objective.losses import finalize_metrics
from rpo_jax.runtime.multislice import consecutive_slices, default_slice_of
from rpo_jax.runtime.sharding import ShardingError, batch_shardings, check_slices, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.step import init_train_state, make_train_step


def interleaved(device) -> int:
    """Fake slices 0 and 1 alternating over device ids: only grouping by slice, not by order, puts them in blocks."""
    return device.id % 2


def test_each_slice_is_one_block_of_the_data_axis():
    mesh = make_mesh(MeshConfig(dcn_data=2, data=2, fsdp=-1, tensor=1), slice_of=interleaved)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    slices = np.vectorize(interleaved)(mesh.devices)
    assert (slices[:2] == 0).all() and (slices[2:] == 1).all()
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_dcn_data_must_match_the_slices():
    with pytest.raises(ShardingError, match=r"form 1 slice\(s\) \(one per process.*set mesh.dcn_data=1"):
        make_mesh(MeshConfig(dcn_data=2))  # one process, no TPU slices: one slice
    with pytest.raises(ShardingError, match=r"mesh.dcn_data=4, but the 8 devices form 2 slice\(s\)"):
        make_mesh(MeshConfig(dcn_data=4), slice_of=interleaved)
    with pytest.raises(ShardingError, match=r"of \[3, 5\] devices: slices of different sizes"):
        make_mesh(MeshConfig(dcn_data=2), slice_of=lambda d: int(d.id < 3))
    with pytest.raises(ShardingError, match="8 devices do not form 3 equal slices"):
        make_mesh(MeshConfig(dcn_data=3))
    # TPU devices carry slice_index: a multislice run left at dcn_data=1 is told the number (not JAX's error).
    tpu = [SimpleNamespace(slice_index=i // 4, process_index=i // 4) for i in range(8)]
    with pytest.raises(ShardingError, match=r"2 slice\(s\) \(TPU slices, MEGASCALE_NUM_SLICES=.*--num-slices 2"):
        make_mesh(MeshConfig(), tpu)
    check_slices(MeshConfig(dcn_data=2), tpu, default_slice_of)


def test_dcn_data_in_config_and_mesh_flag():
    assert parse_mesh_sizes("dcn_data=2,fsdp=-1") == {"dcn_data": 2, "fsdp": -1}
    with pytest.raises(ConfigError, match="mesh.dcn_data"):
        tiny_config(mesh={"dcn_data": 0})


def replica_groups(hlo: str, ops: tuple[str, ...]) -> list[list[int]]:
    """Device groups (positions in the mesh) of every `ops` collective in compiled HLO, in any of its three notations:
    explicit `{{0,1},{2,3}}`, iota `[2,4]<=[8]`, or `mesh['axis_0'=4,...], device_ids=(...) {'axis_0'}`."""
    groups = []
    for line in hlo.splitlines():
        if not re.search(rf" ({'|'.join(ops)})(-start)?\(", line):
            continue
        if m := re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line):
            groups += [[int(i) for i in g.split(",")] for g in re.findall(r"\{([\d,]+)\}", m.group(1))]
        elif m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line):
            n, size, dims, perm = m.groups()
            groups += _iota(dims, perm).reshape(int(n), int(size)).tolist()
        elif m := re.search(
            r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))? \{([^}]*)\}", line
        ):
            named = re.findall(r"'(\w+)'=(\d+)", m.group(1))
            names, shape = [n for n, _ in named], [int(size) for _, size in named]
            ids = _iota(m.group(2) or str(math.prod(shape)), m.group(3)).reshape(shape)
            along = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(4))]
            rest = [i for i in range(len(shape)) if i not in along]
            groups += ids.transpose(rest + along).reshape(-1, math.prod(shape[i] for i in along)).tolist()
        else:
            raise AssertionError(f"replica groups in a notation this test does not read: {line.strip()[:200]}")
    return groups


def _iota(dims: str, perm: str | None) -> np.ndarray:
    ids = np.arange(math.prod(int(d) for d in dims.split(","))).reshape([int(d) for d in dims.split(",")])
    return (ids.transpose([int(p) for p in perm.split(",")]) if perm else ids).reshape(-1)


def test_two_slices_train_with_weight_traffic_inside_each_slice():
    """A train step on (dcn_data=2 × fsdp=4) with interleaved fake slices: no parameter is split across slices, and
    every FSDP weight gather / gradient scatter and every all-to-all of the compiled step (forward, backward,
    embedding lookup) stays inside one slice; only reductions (the data-parallel gradient, the loss sums) cross."""
    cfg = tiny_config()
    mesh = make_mesh(MeshConfig(dcn_data=2, data=1, fsdp=4, tensor=1), slice_of=interleaved)
    policy = build_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    assert all("data" not in sh.spec for sh in jax.tree.leaves(state_sh["params"]))
    batch = make_batch(8, 2, 16, TINY_MODEL["vocab_size"])
    b_sh = batch_shardings(batch, mesh)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
    step = make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh)
    compiled = step.lower(state, policy.frozen, policy.reference, batch).compile()
    _, metrics = compiled(state, policy.frozen, policy.reference, batch)
    assert np.isfinite(finalize_metrics(jax.device_get(metrics["sums"]))["loss"])

    slice_at = [interleaved(d) for d in mesh.devices.flat]  # HLO groups name positions in the mesh
    hlo = compiled.as_text()
    inside = replica_groups(hlo, ("all-gather", "reduce-scatter", "all-to-all"))
    assert inside, "expected FSDP weight gathers in the compiled step"
    assert all(len({slice_at[p] for p in group}) == 1 for group in inside), inside
    assert any(len({slice_at[p] for p in group}) == 2 for group in replica_groups(hlo, ("all-reduce",)))


def test_plan_plans_two_slices(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "loss": {"logits_chunk_size": 8}}))
    out = tmp_path / "plan.json"
    argv = ["plan", "--config", str(config), "--mesh", "dcn_data=2", "--batch-size", "8", "--seq-len", "16"]
    assert cli_main([*argv, "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["devices"] == 8 and report["dcn_slices"] == 2
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert "fsdp=4 in each of 2 slices" in report["mesh_from"]
    assert "(8 devices, data axis across 2 slices)" in capsys.readouterr().out
    assert load_config(config, ["mesh.dcn_data=2"]).mesh.dcn_data == 2
    mesh = make_mesh(MeshConfig(dcn_data=2, fsdp=4), jax.devices(), consecutive_slices(jax.devices(), 2))
    assert [d.id for d in mesh.devices[1].flat] == [4, 5, 6, 7]
