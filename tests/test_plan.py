"""`rpo-jax plan`: the train step compiled on abstract shapes reports the memory real arrays would take."""

import json
import pathlib

import jax
import numpy as np
import pytest
import yaml
from synthetic import TINY_MODEL, make_batch, tiny_config

from rpo_jax.cli import main as cli_main
from rpo_jax.config.loading import load_config
from rpo_jax.config.schema import ConfigError
from rpo_jax.plan.planning import parameter_arithmetic, plan_train_step
from rpo_jax.plan.target_mesh import resolve_plan_mesh
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.step import init_train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bytes_on_device(tree, device) -> int:
    """Bytes of `device`'s shards of every array in `tree` (what one device really holds)."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


@pytest.mark.parametrize(
    "sections",
    [
        {},  # full fine-tune, separate reference copy
        {
            "lora": {"rank": 4, "alpha": 8.0},
            "train": {"reference_mode": "lora_base"},
            "mesh": {"max_replicated_fraction": 0.25},
        },
    ],
    ids=["full_separate", "lora_base"],
)
def test_plan_arguments_equal_real_arrays(sections):
    cfg = tiny_config(mesh={"data": 2, "fsdp": 2, "tensor": 2, **sections.pop("mesh", {})}, **sections)
    mesh = make_mesh(cfg.mesh)
    report = plan_train_step(cfg, mesh, batch_size=8, seq_len=16)

    policy = build_policy(cfg, mesh)
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps)
    state, _ = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    batch = make_batch(8, 2, 16, TINY_MODEL["vocab_size"])
    b_sh = batch_shardings(batch, mesh)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
    device = mesh.devices.flat[0]
    real = {
        "train_state": bytes_on_device(state, device),
        "frozen": bytes_on_device(policy.frozen, device),
        "reference": bytes_on_device(policy.reference, device),
        "batch": bytes_on_device(batch, device),
    }
    assert report["inputs_per_device_bytes"] == {**real, "total": sum(real.values())}
    num_trainable = sum(x.size for x in jax.tree.leaves(policy.trainable))
    if cfg.lora.rank:
        assert report["arithmetic"]["num_lora_params"] == num_trainable
    else:
        assert report["arithmetic"]["num_params"] == num_trainable
    # Every input is an argument of the compiled step, batch["margin"] too though the sigmoid loss never reads it:
    # the micro-batch while-loop indexes every field of the batch, so jit cannot drop one.
    memory = report["memory_per_device_bytes"]
    assert memory["argument"] == sum(real.values())
    # The donated train state comes back in place: every byte of it is aliased to an output.
    assert memory["alias"] == real["train_state"]


def test_offload_remat_fails_clearly_on_cpu():
    # XLA:CPU compiles offload annotations away; plan (and train, via build_policy) must say so, not ignore it.
    cfg = tiny_config(model={**TINY_MODEL, "remat_policy": "minimal_offloaded"})
    mesh = make_mesh(cfg.mesh)
    with pytest.raises(ConfigError, match="model.remat_policy=minimal_offloaded"):
        plan_train_step(cfg, mesh, batch_size=8, seq_len=16)
    with pytest.raises(ConfigError, match="model.remat_policy=minimal_offloaded"):
        build_policy(cfg, mesh)


def test_save_dots_remat_plans_on_one_device():
    cfg = tiny_config(model={**TINY_MODEL, "remat_policy": "minimal"}, mesh={"data": 1, "fsdp": 1, "tensor": 1})
    report = plan_train_step(cfg, make_mesh(cfg.mesh, jax.devices()[:1]), batch_size=8, seq_len=16)
    assert report["model"]["remat_policy"] == "minimal" and report["devices"] == 1
    assert report["memory_per_device_bytes"]["temp"] > 0


def test_command_reexecs_for_more_devices(tmp_path):
    # 16 devices > the 8 this test process has: the command re-runs itself with XLA_FLAGS set.
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "loss": {"logits_chunk_size": 8}}))
    out = tmp_path / "plan.json"
    code = cli_main(
        [
            "plan",
            "--config",
            str(config),
            "--mesh",
            "data=2,fsdp=8,tensor=1",
            "--batch-size",
            "16",
            "--seq-len",
            "16",
            "--hbm-gb",
            "1",
            "--topology",
            "v5p:2x2x1",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["devices"] == 16 and report["mesh"] == {"data": 2, "fsdp": 8, "tensor": 1}
    assert report["fits"] is True
    # No TPU here: the topology compile is reported as skipped, not silently dropped.
    assert report["target_topology"] == {"name": "v5p:2x2x1", "skipped": "default backend is cpu, not tpu"}


def test_plan_resolves_a_minus_one_axis_against_the_devices_planned_for(tmp_path, capsys):
    """Every shipped config says mesh.fsdp: -1 (base.yaml). plan resolves it as training does: against this
    machine's devices (8 simulated in the tests), or `--devices N`; the report says which mesh it planned."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "loss": {"logits_chunk_size": 8}}))
    plan_tiny = ["plan", "--config", str(config), "--batch-size", "8", "--seq-len", "16", "--output"]
    assert load_config(config).mesh.fsdp == -1

    assert cli_main([*plan_tiny, str(tmp_path / "local.json")]) == 0
    report = json.loads((tmp_path / "local.json").read_text())
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report["mesh_from"].startswith("fsdp=-1 of {'data': 1, 'fsdp': -1, 'tensor': 1} resolved to fsdp=8")
    assert "the 8 cpu device(s) JAX sees on this machine" in report["mesh_from"]
    assert f"mesh: {report['mesh_from']}" in capsys.readouterr().out

    assert cli_main([*plan_tiny, str(tmp_path / "two.json"), "--devices", "2"]) == 0
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["devices"] == 2 and report["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert "resolved to fsdp=2 for --devices 2" in report["mesh_from"]
    resolved, why = resolve_plan_mesh(load_config(config, ["mesh.data=2"]), 8, "8 devices")
    assert (resolved.mesh.data, resolved.mesh.fsdp, resolved.mesh.tensor) == (2, 4, 1) and "fsdp=4" in why

    # A count the mesh cannot use is one line naming the mesh and where the count came from; nothing is compiled.
    for flags, problem in [
        (["--mesh", "data=3", "--devices", "4"], "4 devices not divisible by 3 (devices counted from --devices 4)"),
        (["--mesh", "data=2,fsdp=1", "--devices", "4"], "needs 2 devices, 4 available (devices counted from --devices"),
        (["--devices", "0"], "--devices 0: must be at least 1"),
    ]:
        capsys.readouterr()
        assert cli_main([*plan_tiny, str(tmp_path / "bad.json"), *flags]) == 2
        assert problem in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def check_against_arithmetic(report: dict, rel: float = 0.15) -> None:
    """Compiled argument bytes = params + optimizer state + reference (+ batch) per device, vs dtype arithmetic."""
    args = report["memory_per_device_bytes"]["argument"]
    expected = report["arithmetic"]["total_bytes_per_device"] + report["inputs_per_device_bytes"]["batch"]
    assert args == pytest.approx(expected, rel=rel)
    assert report["memory_per_device_bytes"]["temp"] > 0


@pytest.mark.slow
def test_plan_llama3_1_8b_full_finetune_fsdp8(tmp_path):
    """The 8B model dims, full fine-tune (bf16 weights, bf16 Adam moments, separate bf16 reference) on 8
    simulated devices: 16 GB × 4 copies / 8 ≈ 7.5 GiB per device. Short rows keep the CPU compile modest."""
    out = tmp_path / "plan.json"
    code = cli_main(
        [
            "plan",
            "--config",
            str(ROOT / "configs/run/rpo_llama3_1_8b_v5p8.yaml"),
            "--mesh",
            "data=1,fsdp=8,tensor=1",
            "--batch-size",
            "8",
            "--seq-len",
            "256",
            "--set",
            "train.grad_accum_steps=1",
            "--set",
            "lora.rank=0",
            "--set",
            "train.reference_mode=separate",
            "--set",
            "optim.learning_rate=5e-6",
            "--set",
            "optim.moments_dtype=bfloat16",
            "--hbm-gb",
            "80",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["arithmetic"]["num_params"] == 8_030_261_248  # Llama-3.1-8B
    assert report["flops"]["matmul_params"] == pytest.approx(7.50e9, rel=1e-3)  # docs/algorithms.md §7
    check_against_arithmetic(report)
    parts = report["arithmetic"]["bytes_per_device"]
    assert parts["adam_moments"] == 2 * parts["policy_weights"] == 2 * parts["reference_copy"]
    assert np.isclose(report["arithmetic"]["total_bytes_per_device"] / 2**30, 4 * 8.03e9 * 2 / 8 / 2**30, rtol=1e-3)


@pytest.mark.slow
def test_plan_llama3_1_70b_lora_fsdp16_tensor4(tmp_path):
    """The 70B RPO run config (LoRA, base with adapters off as reference) on 64 simulated devices: the command
    re-runs itself with 64 CPU devices. Arguments are the frozen bf16 base / 64 plus the small LoRA state."""
    out = tmp_path / "plan.json"
    code = cli_main(
        [
            "plan",
            "--config",
            str(ROOT / "configs/run/rpo_llama3_1_70b_v5p64.yaml"),
            "--mesh",
            "data=1,fsdp=16,tensor=4",
            "--batch-size",
            "16",
            "--seq-len",
            "256",
            "--set",
            "train.grad_accum_steps=1",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["devices"] == 64
    assert report["arithmetic"]["num_params"] == 70_553_706_496  # Llama-3.1-70B
    # docs/algorithms.md §7: 139 GFLOP/token
    assert 2 * report["flops"]["matmul_params"] == pytest.approx(139e9, rel=5e-3)
    assert report["arithmetic"]["num_lora_params"] == 103_546_880  # r 8 on all 7 linear maps × 80 layers
    check_against_arithmetic(report)
    assert report["inputs_per_device_bytes"]["frozen"] == pytest.approx(70.55e9 * 2 / 64, rel=0.01)


def _temp(cfg, seq_len: int, batch_size: int = 8, **kwargs) -> int:
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    return plan_train_step(cfg, mesh, batch_size, seq_len, **kwargs)["memory_per_device_bytes"]["temp"]


def test_blockwise_temporaries_grow_linearly_with_length():
    """The tiny run config at 4096 and 16384 tokens (issue #15): 4x the length, at most 6x the temporaries
    (xla attention: 16x, its [L, L] scores dominate; measured 34 GiB -> 536 GiB, docs/benchmarks.md)."""
    cfg = load_config(ROOT / "configs/run/tiny_rpo.yaml", ["model.attention=blockwise", "mesh.fsdp=1"])
    short, long = _temp(cfg, 4096), _temp(cfg, 16384)
    assert long / short <= 6.0, (short, long)


@pytest.mark.slow
def test_remat_policies_change_planned_memory():
    """Each MaxText-named policy keeps less than the one before it, in the compiled step's temporaries; chunking
    the MLP keeps one chunk's [B, C, F] intermediates instead of the whole rows'. A wide MLP so that it matters."""
    model = {**TINY_MODEL, "hidden_size": 64, "intermediate_size": 1024}
    temps = {}
    for policy, chunk in [(p, 0) for p in ("none", "minimal", "save_dot_except_mlp", "save_qkv_proj", "full")] + [
        ("full", 32)
    ]:
        settings = {**model, "remat_policy": policy, "mlp_chunk_size": chunk}
        cfg = tiny_config(model=settings, mesh={"fsdp": 1}, loss={"logits_chunk_size": 64})
        temps[policy, chunk] = _temp(cfg, 128, batch_size=2)
    values = list(temps.values())
    assert all(a > b for a, b in zip(values, values[1:])), temps


def test_plan_compiles_bf16_as_f16_on_cpu_and_reports_precision():
    # XLA:CPU widens bf16 loop operands to f32; the f16 stand-in keeps the widths a bf16-native chip allocates.
    cfg = tiny_config(model={**TINY_MODEL, "param_dtype": "float32", "dtype": "bfloat16"}, mesh={"fsdp": 1})
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    stand_in = plan_train_step(cfg, mesh, 4, 64)
    exact = plan_train_step(cfg, mesh, 4, 64, exact_dtypes=True)
    assert stand_in["precision"]["compiled_as"].startswith("bfloat16 as float16")
    assert exact["precision"]["compiled_as"] == "as configured"
    for key in ("argument", "output", "alias"):  # same program, same buffer widths
        assert stand_in["memory_per_device_bytes"][key] == exact["memory_per_device_bytes"][key]
    assert stand_in["memory_per_device_bytes"]["temp"] < exact["memory_per_device_bytes"]["temp"]
    assert stand_in["precision"] | {"compiled_as": None} == {
        "trained_weights": "float32",
        "frozen_base": None,
        "compute": "bfloat16",
        "adam_moments": "float32",
        "reference_copy": "bfloat16",  # never trained: stored in the compute dtype
        "master_weights": True,
        "loss_scaling": None,
        "compiled_as": None,
    }
    check_against_arithmetic(stand_in)
    assert (
        stand_in["arithmetic"]["bytes_per_device"]["reference_copy"] * 2
        == (stand_in["arithmetic"]["bytes_per_device"]["policy_weights"])
    )
    model = {**TINY_MODEL, "param_dtype": "float32", "dtype": "bfloat16"}
    halved = tiny_config(model=model, optim={"moments_dtype": "bfloat16"}, mesh={"fsdp": 1})
    parts = parameter_arithmetic(halved, mesh)["bytes_per_device"]
    assert parts["adam_moments"] == parts["policy_weights"]  # two bf16 moments = one fp32 copy


@pytest.mark.slow
def test_plan_llama3_1_8b_lora_fits_one_80gb_gpu(tmp_path):
    """Issue #15: Llama-3.1-8B LoRA on one GPU, 8 pairs (16 rows) of 4096 tokens per micro-step, <= 72 GiB."""
    out = tmp_path / "plan.json"
    config = ROOT / "configs/run/rpo_llama3_1_8b_lora_1gpu.yaml"
    code = cli_main(
        ["plan", "--config", str(config), "--mesh", "data=1,fsdp=1,tensor=1", "--hbm-gb", "80", "--output", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    batch = report["batch"]
    assert batch["global_batch_size"] // batch["grad_accum_steps"] >= 8 and batch["seq_len"] == 4096
    assert report["memory_per_device_bytes"]["peak_estimate"] <= 72 * 2**30
    assert report["attention"]["implementation"] == "blockwise" and report["model"]["attention"] == "auto"
