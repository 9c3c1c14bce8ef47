"""Compile the real train step on abstract shapes and report per-device memory and FLOPs (`rpo-jax plan`).

Nothing is allocated: the policy, optimizer state and batch are `jax.ShapeDtypeStruct`s carrying their
shardings, `make_train_step(...).lower(...).compile()` partitions the program for the mesh, and XLA's
`memory_analysis()` / `cost_analysis()` describe ONE device's share of it. Beside them the report gives the
same quantities from arithmetic (parameter counts × dtype sizes / shards; docs/algorithms.md §7), so a
surprising compiled number can be told apart from a surprising configuration.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rpo_jax.config.schema import Config
from rpo_jax.model.attention import platform_of, resolve_attention
from rpo_jax.model.llama import LAYER_WEIGHTS, LORA_TARGETS, count_params, layer_weight_shapes
from rpo_jax.model.quantization import CODE_BITS
from rpo_jax.model.remat import OFFLOADING, compiled_uses_host_memory, offload_error
from rpo_jax.objective.losses import LOSSES
from rpo_jax.plan.dtypes import compile_for_plan, format_precision, precision
from rpo_jax.plan.flops import forward_flops, matmul_params, step_flop_units
from rpo_jax.runtime.sharding import batch_shardings
from rpo_jax.train.batches import check_batch_split
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import abstract_policy, reference_dtype
from rpo_jax.train.step import abstract_train_state, make_train_step

GIB = 2**30


def group_size(cfg: Config) -> int:
    """Sequences per preference group: 4 when a loss needs IOPO's quadruples, else 2."""
    sizes = {LOSSES[name].group_size for name in cfg.loss.loss_type} - {None}
    return sizes.pop() if sizes else 2


def abstract_batch(cfg: Config, mesh: Mesh, batch_size: int, seq_len: int) -> dict:
    """The batch the trainer feeds (`trainer._model_inputs`), as sharded ShapeDtypeStructs."""
    B, G, L = batch_size, group_size(cfg), seq_len
    shapes = {
        "tokens": ((B, G, L), jnp.int32),
        "loss_mask": ((B, G, L), jnp.bool_),
        "segment_ids": ((B, G, L), jnp.int32),
        "positions": ((B, G, L), jnp.int32),
        "margin": ((B,), jnp.int32),
    }
    if cfg.train.reference_mode == "precomputed":
        shapes["ref_logps"] = ((B, G), jnp.float32)
    shaped = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}
    shardings = batch_shardings(shaped, mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in shaped.items()}


def shard_bytes(tree: Any) -> int:
    """Bytes ONE device holds for a tree of sharded ShapeDtypeStructs or arrays (its shard of each leaf)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def lora_param_count(cfg: Config) -> int:
    """A [in, r] + B [r, out] per adapted weight and layer (in/out as `model.LAYER_WEIGHTS` splits the shape)."""
    if cfg.lora.rank == 0:
        return 0
    shapes = layer_weight_shapes(cfg.model)
    per_layer = 0
    for target in cfg.lora.target_modules:
        name = LORA_TARGETS[target]
        n_in = LAYER_WEIGHTS[name][1]
        per_layer += (math.prod(shapes[name][:n_in]) + math.prod(shapes[name][n_in:])) * cfg.lora.rank
    return per_layer * cfg.model.num_hidden_layers


def parameter_arithmetic(cfg: Config, mesh: Mesh) -> dict:
    """Expected bytes per device from counts and dtypes alone, assuming every weight splits over fsdp×tensor
    (norms are replicated but negligible). Adam's mu and nu are stored in `optim.moments_dtype`."""
    shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
    param_bytes = np.dtype(cfg.model.param_dtype).itemsize
    n_base, n_lora = count_params(cfg.model), lora_param_count(cfg)
    base = n_base * param_bytes / shards
    if cfg.lora.base_quantization != "none":  # the layers' linear maps as codes + one scale per block (QLoRA)
        n_quantized = cfg.model.num_hidden_layers * sum(math.prod(s) for s in layer_weight_shapes(cfg.model).values())
        bits = CODE_BITS[cfg.lora.base_quantization] + 8 * param_bytes / cfg.lora.quantization_block_size
        base -= n_quantized * (param_bytes - bits / 8) / shards
    lora = n_lora * 4 / shards  # LoRA factors are created in float32 whatever param_dtype says
    uses_lora = cfg.lora.rank > 0
    moment_bytes = np.dtype(cfg.optim.moments_dtype).itemsize
    separate = cfg.train.reference_mode == "separate"
    parts = {
        "policy_weights": base,
        "lora_factors": lora,
        "adam_moments": 2 * (n_lora if uses_lora else n_base) * moment_bytes / shards,
        "reference_copy": n_base * np.dtype(reference_dtype(cfg)).itemsize / shards if separate else 0.0,
    }
    return {
        "num_params": n_base,
        "num_lora_params": n_lora,
        "param_dtype": cfg.model.param_dtype,
        "model_shards": shards,
        "bytes_per_device": parts,
        "total_bytes_per_device": sum(parts.values()),
    }


def analytic_flops(cfg: Config, batch_size: int, seq_len: int) -> dict:
    """docs/algorithms.md §7 (`rpo_jax.plan.flops`) over padded rows; remat's recomputation is excluded (MFU counts
    model FLOPs)."""
    forward = forward_flops(cfg.model, np.full(batch_size * group_size(cfg), seq_len))
    passes = step_flop_units(cfg.train.reference_mode, cfg.lora.rank > 0)
    return {
        "matmul_params": matmul_params(cfg.model),
        "forward_flops": forward,
        "passes": passes,
        "model_flops_per_step": forward * passes,
    }


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def plan_train_step(
    cfg: Config, mesh: Mesh, batch_size: int, seq_len: int, hbm_gib: float | None = None, exact_dtypes: bool = False
) -> dict:
    """Lowers and compiles `make_train_step` for `mesh` on abstract inputs; returns the report as a dict.
    On CPU a bfloat16 program is compiled with float16 in its place unless `exact_dtypes` (`rpo_jax.plan.dtypes`)."""
    check_batch_split(batch_size, cfg.train.grad_accum_steps, mesh, setting="batch size")
    policy = abstract_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    state, state_sh = abstract_train_state(policy, optimizer, cfg.train.seed, mesh)
    batch = abstract_batch(cfg, mesh, batch_size, seq_len)
    step = make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, {k: v.sharding for k, v in batch.items()})
    t0 = time.perf_counter()
    lowered = step.lower(state, policy.frozen, policy.reference, batch)
    t1 = time.perf_counter()
    platform = mesh.devices.flat[0].platform
    compiled, compiled_as = compile_for_plan(lowered, platform, exact_dtypes)
    t2 = time.perf_counter()
    # The probe in `abstract_policy` already passed; this checks the real program kept its host buffers too.
    if cfg.model.remat_policy == OFFLOADING and not compiled_uses_host_memory(compiled.as_text()):
        raise offload_error(platform)

    mem = compiled.memory_analysis()
    memory = {
        name: int(getattr(mem, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "alias", "temp", "generated_code")
    }
    memory["peak_estimate"] = memory["argument"] + memory["temp"] + memory["output"] - memory["alias"]
    inputs = {
        "train_state": shard_bytes(state),
        "frozen": shard_bytes(policy.frozen),
        "reference": shard_bytes(policy.reference or {}),
        "batch": shard_bytes(batch),
    }
    cost = _cost(compiled)
    n_devices = mesh.devices.size
    model_flops = analytic_flops(cfg, batch_size, seq_len)
    report = {
        "platform": platform,
        "mesh": dict(mesh.shape),
        "dcn_slices": cfg.mesh.dcn_data,  # the data axis spans these (multislice); fsdp and tensor stay in one
        "devices": int(n_devices),
        "batch": {
            "global_batch_size": batch_size,
            "group_size": group_size(cfg),
            "seq_len": seq_len,
            "grad_accum_steps": cfg.train.grad_accum_steps,
        },
        "model": {
            "param_dtype": cfg.model.param_dtype,
            "dtype": cfg.model.dtype,
            "remat_policy": cfg.model.remat_policy,
            "attention": cfg.model.attention,
            "scan_layers": cfg.model.scan_layers,
            "lora_rank": cfg.lora.rank,
            "reference_mode": cfg.train.reference_mode,
        },
        "attention": dict(zip(("implementation", "reason"), resolve_attention(cfg.model, platform_of(mesh)))),
        "precision": {**precision(cfg), "compiled_as": compiled_as},
        "compile_seconds": {"lower": round(t1 - t0, 2), "compile": round(t2 - t1, 2)},
        "memory_per_device_bytes": memory,
        "inputs_per_device_bytes": {**inputs, "total": sum(inputs.values())},
        "arithmetic": parameter_arithmetic(cfg, mesh),
        "flops": {
            # HloCostAnalysis counts a while-loop body once, not once per trip: a lower bound, not the step.
            "xla_per_device": float(cost.get("flops", float("nan"))),
            "xla_total": float(cost.get("flops", float("nan"))) * n_devices,
            **analytic_flops(cfg, batch_size, seq_len),
            "model_flops_per_device": model_flops["model_flops_per_step"] / n_devices,
        },
    }
    if hbm_gib is not None:
        report["hbm_gib"] = hbm_gib
        report["fits"] = memory["peak_estimate"] <= hbm_gib * GIB
    return report


def _gib(x: float) -> str:
    return f"{x / GIB:9.2f} GiB" if x >= GIB / 4 else f"{x / 2**20:9.2f} MiB"


def format_report(report: dict) -> str:
    mem, ins, ar, fl = (
        report["memory_per_device_bytes"],
        report["inputs_per_device_bytes"],
        report["arithmetic"],
        report["flops"],
    )
    b = report["batch"]
    slices = f", data axis across {report['dcn_slices']} slices" if report["dcn_slices"] > 1 else ""
    lines = [
        f"platform {report['platform']}, mesh {report['mesh']} ({report['devices']} devices{slices}); "
        f"batch {b['global_batch_size']}×G{b['group_size']}×L{b['seq_len']}, grad_accum {b['grad_accum_steps']}",
        *([f"mesh: {report['mesh_from']}"] if "mesh_from" in report else []),
        f"model {report['model']}",
        f"attention: {report['model']['attention']} -> {report['attention']['implementation']} "
        f"({report['attention']['reason']})",
        format_precision(report["precision"]),
        f"lower {report['compile_seconds']['lower']} s, compile {report['compile_seconds']['compile']} s",
        "compiled memory per device (XLA memory_analysis):",
        *(f"  {k:<16}{_gib(v)}" for k, v in mem.items()),
        "  (peak_estimate = argument + temp + output - alias)",
        "inputs per device (shards of the abstract arguments):",
        *(f"  {k:<16}{_gib(v)}" for k, v in ins.items()),
        f"arithmetic: {ar['num_params']:,} params ({ar['param_dtype']}), {ar['num_lora_params']:,} LoRA (float32), "
        f"/ {ar['model_shards']} model shards:",
        *(f"  {k:<16}{_gib(v)}" for k, v in ar["bytes_per_device"].items()),
        f"  {'total':<16}{_gib(ar['total_bytes_per_device'])}",
        f"FLOPs per step, model (docs/algorithms.md §7, {fl['passes']} forward equivalents over padded rows): "
        f"{fl['model_flops_per_step']:.4g} total, {fl['model_flops_per_device']:.4g}/device",
        f"FLOPs per step, XLA cost_analysis: {fl['xla_per_device']:.4g}/device ({fl['xla_total']:.4g} total); "
        "it counts each while-loop body (layer scan, micro-batch scan, logits chunks) once, so it is far below "
        "the model figure: use the model figure for MFU",
    ]
    if "fits" in report:
        verdict = "fits" if report["fits"] else "DOES NOT FIT"
        lines.append(f"peak estimate {mem['peak_estimate'] / GIB:.2f} GiB vs HBM {report['hbm_gib']} GiB: {verdict}")
    target = report.get("target_topology")
    if target and "skipped" in target:
        lines.append(f"TPU topology {target['name']}: compile skipped ({target['skipped']})")
    elif target:
        lines.append(f"\ncompiled for TPU topology {target['name']}:\n{format_report(target)}")
    return "\n".join(lines)


def plan(
    cfg: Config,
    batch_size: int,
    seq_len: int,
    hbm_gib: float | None = None,
    topology: str = "",
    exact_dtypes: bool = False,
) -> dict:
    """`plan_train_step` on the config's mesh of CPU devices, and (on a TPU backend) also for `topology`. With
    mesh.dcn_data > 1 the CPU devices are cut into that many consecutive slices, and `topology` is one slice's."""
    from rpo_jax.plan.target_mesh import tpu_topology_devices
    from rpo_jax.runtime.multislice import consecutive_slices
    from rpo_jax.runtime.sharding import make_mesh

    slices = cfg.mesh.dcn_data
    cpus = jax.devices("cpu")[: math.prod((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)) * slices]
    cpu_mesh = make_mesh(cfg.mesh, cpus, consecutive_slices(cpus, slices) if slices > 1 else None)
    report = plan_train_step(cfg, cpu_mesh, batch_size, seq_len, hbm_gib, exact_dtypes)
    if topology and jax.default_backend() == "tpu":
        devices = tpu_topology_devices(topology, slices)
        report["target_topology"] = {
            "name": topology,
            **plan_train_step(cfg, make_mesh(cfg.mesh, devices), batch_size, seq_len, hbm_gib),
        }
    elif topology:
        report["target_topology"] = {
            "name": topology,
            "skipped": f"default backend is {jax.default_backend()}, not tpu",
        }
    return report
