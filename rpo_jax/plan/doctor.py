"""`rpo-jax doctor`: the first thing to run on a GPU or TPU. It measures a config's train step on the real chip and
checks the chip's fused attention kernel against `blockwise` (`kernel_check`), into one JSON report.

The train steps run first, so the peak device memory reported (`memory_stats()["peak_bytes_in_use"]`, a
high-water mark over the process) is the step's. Each step is ONE micro-batch of the config
(`data.global_batch_size / train.grad_accum_steps` pairs, no accumulation): tokens/s and MFU are the same per
micro-batch, its activations set the memory peak, and 20 full steps of the 1B config (128 micro-batches each)
would take about an hour on an H100 (estimated: 5.4e14 model FLOPs per micro-batch at 40% MFU). The batch is
synthetic, every row as long as the config's longest length bucket (no padding), and the weights are
`train.init_checkpoint` when it exists, else a random init of the same architecture: speed and memory depend on
the shapes only, and the report says which weights ran. On CPU (no accelerator) nothing runs unless forced; the
same plan is listed instead.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import jax
import numpy as np

from data_pipeline.errors import UserError
from rpo_jax.config.schema import Config, ConfigError
from rpo_jax.model.attention import describe_attention, resolve_attention
from rpo_jax.plan import kernel_check
from rpo_jax.plan.flops import CHIP_PEAK_BF16_TFLOPS, chip_peak_flops, forward_flops, step_flop_units
from rpo_jax.plan.planning import group_size
from rpo_jax.plan.step_timing import full_length_batch, prepare_step
from rpo_jax.runtime.distributed import explicit_setup, platform_process_count
from rpo_jax.runtime.out_of_memory import out_of_memory
from rpo_jax.runtime.sharding import make_mesh
from rpo_jax.train.batches import check_batch_split

CPU_STAND_IN = "xla"  # CPU has no fused kernel: the dense reference takes its place, so the comparison still runs
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class DoctorPlan:
    """What doctor runs for a config: the config as measured (one micro-batch per step), its shapes, the weights."""

    config_path: str
    cfg: Config
    steps: int
    pairs: int
    rows: int
    length: int
    config_grad_accum_steps: int
    init_checkpoint: str  # "" when the config's weights are absent: random init
    weights: str

    def step_text(self) -> str:
        accumulated = self.config_grad_accum_steps
        return (
            f"one micro-batch of the config: {self.pairs} pairs x {self.rows // self.pairs} rows x {self.length} "
            f"tokens" + (f" (its optimizer step accumulates {accumulated} of them)" if accumulated > 1 else "")
        )

    def batch_text(self) -> str:
        return f"synthetic: random token ids, every row {self.length} real tokens (prompt 1/4, response 3/4)"


def plan_checks(cfg: Config, config_path: str, steps: int) -> DoctorPlan:
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if cfg.data.packing != "none":
        raise UserError(
            f"{config_path}: data.packing={cfg.data.packing}: doctor measures padded batches "
            "(add --set data.packing=none; `rpo-jax bench --compare packing` measures packing)"
        )
    pairs = cfg.data.global_batch_size // cfg.train.grad_accum_steps
    configured = cfg.train.init_checkpoint
    checkpoint = configured if configured and Path(configured).exists() else ""
    if checkpoint:
        weights = f"train.init_checkpoint {checkpoint}"
    else:
        why = f"train.init_checkpoint {configured} not found" if configured else "the config names no weights"
        weights = f"random init of the config's architecture ({why}); the loss means nothing, speed and memory hold"
    measured = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, global_batch_size=pairs),
        train=dataclasses.replace(cfg.train, grad_accum_steps=1, steps=steps),
    )
    length = max(cfg.data.length_buckets, default=cfg.data.max_length)
    rows = pairs * group_size(cfg)
    accumulated = cfg.train.grad_accum_steps
    return DoctorPlan(config_path, measured, steps, pairs, rows, length, accumulated, checkpoint, weights)


def _train_attention(cfg: Config, platform: str) -> str:
    try:
        impl, why = resolve_attention(cfg.model, platform)
    except ConfigError as err:
        return f"refused: {err}"
    return f"{cfg.model.attention} -> {impl} ({why})"


def describe_plan(plan: DoctorPlan, output: str) -> list[str]:
    """What doctor runs on a GPU and on a TPU, line by line (printed on CPU, where it runs nothing)."""
    model = plan.cfg.model
    peaks = ", ".join(f"{name} {tflops:g}" for name, tflops in CHIP_PEAK_BF16_TFLOPS.items())
    return [
        f"1. {plan.steps} train steps of {plan.config_path}, each {plan.step_text()}",
        f"   batch: {plan.batch_text()}",
        f"   weights: {plan.weights}",
        f"   attention in the step: GPU {_train_attention(plan.cfg, 'gpu')}; TPU {_train_attention(plan.cfg, 'tpu')}",
        f"   reports: compile time, median step time, tokens/s, MFU against the chip's published bf16 peak "
        f"(TFLOP/s: {peaks}), peak device memory",
        f"2. attention kernels against {kernel_check.REFERENCE}, forward and q/k/v gradients, {kernel_check.DTYPE}: "
        + "; ".join(f"{platform.upper()} {impl}" for platform, impl in kernel_check.FUSED_KERNEL.items()),
        f"   heads {model.num_attention_heads}/{model.num_key_value_heads}, head_dim {model.head_dim}, "
        f"{kernel_check.BATCH} rows of {plan.length} tokens; cases: "
        + "; ".join(f"{case} ({text})" for case, text in kernel_check.CASES.items()),
        f"   tolerance: max |kernel - {kernel_check.REFERENCE}| / max |{kernel_check.REFERENCE}| <= "
        f"{kernel_check.FORWARD_TOLERANCE:g} (outputs), {kernel_check.GRADIENT_TOLERANCE:g} (gradients)",
        f"report: {output or 'printed only (--output FILE writes the JSON)'}",
    ]


def _peak_memory(devices: list) -> dict:
    stats = [d.memory_stats() for d in devices]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return {"peak_memory_bytes": None, "memory_note": f"{devices[0].platform} devices report no memory_stats()"}
    return {
        "peak_memory_bytes": max(s["peak_bytes_in_use"] for s in stats),
        "memory_limit_bytes": min(s.get("bytes_limit", 0) for s in stats) or None,
    }


def measure_train_steps(plan: DoctorPlan, devices: list) -> dict:
    """Compiles the config's step for `devices` and runs `plan.steps` of it; times, throughput, MFU, memory."""
    cfg = plan.cfg
    mesh = make_mesh(cfg.mesh, devices)
    check_batch_split(plan.pairs, 1, mesh, setting="the micro-batch (data.global_batch_size / train.grad_accum_steps)")
    batch = full_length_batch(cfg, plan.pairs, plan.length, cfg.train.seed)
    prepared = prepare_step(cfg, batch, mesh, plan.init_checkpoint)
    times = [prepared.run() for _ in range(plan.steps)]
    metrics = jax.device_get(prepared.last_metrics)
    loss_sum, loss_den = metrics["sums"]["loss"]
    loss = float(loss_sum / loss_den)
    median = statistics.median(times)
    tokens = int(np.count_nonzero(batch["segment_ids"]))
    units = step_flop_units(cfg.train.reference_mode, cfg.lora.rank > 0)
    model_flops = units * forward_flops(cfg.model, batch["segment_ids"].astype(bool).sum(-1).reshape(-1))
    peak = chip_peak_flops(devices[0].device_kind, cfg.model.dtype)
    skipped = int(metrics["nonfinite_total"])
    return {
        "config": plan.config_path,
        "step": plan.step_text(),
        "batch": plan.batch_text(),
        "weights": plan.weights,
        "attention": describe_attention(cfg.model, mesh),
        "mesh": dict(mesh.shape),
        "pairs": plan.pairs,
        "rows": plan.rows,
        "row_length": plan.length,
        "steps": plan.steps,
        "compile_s": prepared.compile_s,
        "step_times_s": times,
        "median_step_s": median,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / median,
        "model_flops_per_step": model_flops,
        "flop_units": units,
        "chip_peak_flops_per_s": peak,
        "mfu": model_flops / (median * len(devices) * peak) if peak else None,
        **({} if peak else {"mfu_note": f"no published {cfg.model.dtype} peak for {devices[0].device_kind!r}"}),
        **_peak_memory(devices),
        "compiled_memory": prepared.memory,
        "last_loss": loss if np.isfinite(loss) else None,  # JSON has no NaN
        "skipped_steps": skipped,
        "passed": skipped == 0 and bool(np.isfinite(loss)),
    }


def _failure(err: Exception) -> dict:
    oom = out_of_memory(err)
    text = str(oom or err).splitlines()[0] if str(oom or err) else ""
    return {"passed": False, "error": f"{type(err).__name__}: {text}"}


def run_checks(plan: DoctorPlan, platform: str) -> dict:
    """Both checks on the devices of `platform` (gpu, tpu, or cpu when forced); a check that raises is reported
    failed with its error and the other still runs. A user error (a setting, a checkpoint) stops doctor."""
    explicit = explicit_setup()
    processes = explicit[1] if explicit else platform_process_count()
    if processes > 1:  # the mesh would wait for the other hosts to join, and they run no doctor
        raise UserError(
            f"doctor measures the chips of one host; this job has {processes} processes: run it on one GPU "
            "machine or a single-host TPU VM (e.g. v5p-8)"
        )
    devices = jax.devices(platform)
    report = {
        "platform": platform,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "jax_version": jax.__version__,
    }
    try:
        report["train_steps"] = measure_train_steps(plan, devices)
    except UserError:
        raise
    except Exception as err:  # the report still gets the kernel check, which often names the culprit
        report["train_steps"] = {"config": plan.config_path, "step": plan.step_text(), **_failure(err)}
    model = plan.cfg.model
    shape = {"heads": model.num_attention_heads, "kv_heads": model.num_key_value_heads, "head_dim": model.head_dim}
    impl = kernel_check.FUSED_KERNEL.get(platform, CPU_STAND_IN)
    report["attention_kernels"] = kernel_check.check_kernel(impl, shape, plan.length, devices[0])
    if platform not in kernel_check.FUSED_KERNEL:
        report["attention_kernels"]["stand_in"] = f"{platform} has no fused kernel: {CPU_STAND_IN} stands in for it"
    report["passed"] = report["train_steps"]["passed"] and report["attention_kernels"]["passed"]
    return report


def format_report(report: dict) -> str:
    steps, kernels = report["train_steps"], report["attention_kernels"]
    lines = [f"{report['devices']} x {report['device_kind']} ({report['platform']}), jax {report['jax_version']}"]
    if "error" in steps:
        lines.append(f"train steps: FAILED: {steps['error']}")
    else:
        mfu = f"{steps['mfu']:.1%}" if steps["mfu"] is not None else "n/a"
        memory, loss = steps["peak_memory_bytes"], steps["last_loss"]
        memory_text = "n/a" if memory is None else f"{memory / GIB:.2f} GiB"
        lines.append(
            f"train steps: {steps['steps']} x ({steps['step']}): compile {steps['compile_s']:.1f} s, median "
            f"{steps['median_step_s']:.3f} s/step, {steps['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak memory "
            f"{memory_text}, loss {'n/a' if loss is None else f'{loss:.4f}'} "
            f"[{'pass' if steps['passed'] else 'FAIL'}]"
        )
    lines.append(
        f"attention {kernels['kernel']} vs {kernels['reference']} ({kernels['dtype']}; tolerance outputs "
        f"{kernels['tolerance']['forward']:g}, gradients {kernels['tolerance']['gradients']:g}):"
    )
    for case in kernels["cases"]:
        if "error" in case:
            lines.append(f"  {case['case']}: FAILED: {case['error']}")
            continue
        lines.append(
            f"  {case['case']}: outputs {case['forward_error']:.2e}, gradients "
            f"{max(case['gradient_errors'].values()):.2e}, fwd+bwd {case['kernel_fwd_bwd_ms']:.2f} ms vs "
            f"{case['reference_fwd_bwd_ms']:.2f} ms [{'pass' if case['passed'] else 'FAIL'}]"
        )
    return "\n".join(lines)
