"""`rpo-jax doctor`: on CPU it lists its checks and runs nothing; `--force-cpu` runs the whole path (xla standing in
for the fused kernel) and writes the JSON; the kernel comparison passes a correct kernel, fails a wrong one and
reports one that raises; the measured config is one micro-batch of the given config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.errors import UserError
from rpo_jax.cli import main as cli_main
from rpo_jax.config.loading import load_config
from rpo_jax.model.attention import AttentionMask, attention_mask, xla_attention
from rpo_jax.plan import doctor, kernel_check
from rpo_jax.plan.flops import forward_flops, step_flop_units
from rpo_jax.plan.step_timing import full_length_batch

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = REPO / "configs/run/rpo_llama3_2_1b_lora_gpu.yaml"
TINY_CONFIG = "configs/run/tiny_rpo.yaml"
SHORT_ROWS = ["--set", "data.max_length=64", "--set", "data.length_buckets=[64]"]
HEADS = {"heads": 4, "kv_heads": 2, "head_dim": 16}


def test_on_cpu_doctor_lists_its_checks_and_runs_nothing(tmp_path, capsys, monkeypatch):
    def must_not_run(*_):
        raise AssertionError("doctor ran a check on CPU without --force-cpu")

    monkeypatch.setattr(doctor, "run_checks", must_not_run)
    out = tmp_path / "listing.json"
    assert cli_main(["doctor", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for expected in (
        "nothing ran",
        "20 train steps of configs/run/rpo_llama3_2_1b_lora_gpu.yaml",
        "8 pairs x 2 rows x 4096 tokens (its optimizer step accumulates 128 of them)",
        "random init of the config's architecture",
        "GPU auto -> cudnn",
        "TPU auto -> splash",
        "GPU cudnn; TPU splash",
        "against blockwise, forward and q/k/v gradients, bfloat16",
        "heads 32/8, head_dim 64, 2 rows of 4096 tokens",
        "<= 0.02 (outputs), 0.03 (gradients)",
        "--force-cpu --steps 2 --config configs/run/tiny_rpo.yaml",
    ):
        assert expected in printed, expected
    listing = json.loads(out.read_text())
    assert listing["ran"] is False and listing["backend"] == "cpu"
    assert listing["would_run"][0].startswith("1. 20 train steps")


def test_forced_cpu_run_writes_the_whole_report(tmp_path, capsys, monkeypatch):
    """The whole path on the tiny config (rows cut to 64 tokens to keep it quick); a stand-in chip peak of 1 TFLOP/s
    makes the MFU arithmetic run."""
    monkeypatch.setattr(doctor, "chip_peak_flops", lambda kind, dtype: 1e12)
    out = tmp_path / "doctor.json"
    argv = ["doctor", "--force-cpu", "--steps", "2", "--config", TINY_CONFIG, *SHORT_ROWS, "--output", str(out)]
    assert cli_main(argv) == 0
    assert "[pass]" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ran"] and report["passed"] and report["platform"] == "cpu"
    steps = report["train_steps"]
    assert steps["config"] == TINY_CONFIG and steps["steps"] == 2 and len(steps["step_times_s"]) == 2
    assert (steps["pairs"], steps["rows"], steps["row_length"]) == (8, 16, 64)
    assert steps["tokens_per_step"] == 16 * 64
    assert steps["tokens_per_s"] == pytest.approx(16 * 64 / steps["median_step_s"])
    cfg = load_config(REPO / TINY_CONFIG)
    flops = step_flop_units("separate", False) * forward_flops(cfg.model, np.full(16, 64))
    assert steps["model_flops_per_step"] == pytest.approx(flops)
    devices = report["devices"]
    assert steps["mfu"] == pytest.approx(flops / (steps["median_step_s"] * devices * 1e12))
    assert steps["mesh"]["fsdp"] == devices and steps["attention"].endswith("-> blockwise (auto on the cpu backend)")
    assert steps["peak_memory_bytes"] is None and "memory_stats" in steps["memory_note"]
    assert steps["compiled_memory"]["compiled_peak_bytes"] > 0 and steps["compile_s"] > 0
    assert steps["skipped_steps"] == 0 and np.isfinite(steps["last_loss"]) and steps["passed"]
    assert steps["weights"].startswith("random init") and "synthetic" in steps["batch"]
    kernels = report["attention_kernels"]
    assert (kernels["kernel"], kernels["reference"], kernels["dtype"]) == ("xla", "blockwise", "bfloat16")
    assert "stands in" in kernels["stand_in"] and kernels["passed"]
    assert [case["case"] for case in kernels["cases"]] == ["padded", "packed"]
    for case in kernels["cases"]:
        assert 0 < case["forward_error"] <= kernels["tolerance"]["forward"]
        assert set(case["gradient_errors"]) == {"q", "k", "v"} and case["kernel_fwd_bwd_ms"] > 0


def test_a_wrong_or_failing_kernel_fails_the_check():
    """A correct kernel (xla) passes in the forced run above; here one with a mask mistake fails, and one that
    raises is reported with its error."""
    device = jax.devices("cpu")[0]
    seg, _ = kernel_check.case_segments("padded", 64)
    scale = HEADS["head_dim"] ** -0.5
    blockwise = kernel_check.attention_fn("blockwise", AttentionMask(jnp.asarray(seg)), scale, False)
    # Each query also sees the next key: the classic off-by-one of a causal mask.
    late_mask = attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal_offset=1)
    one_token_late = lambda q, k, v: xla_attention(q, k, v, late_mask, scale=scale)  # noqa: E731
    wrong = kernel_check.compare_attention(one_token_late, blockwise, HEADS, seg, device, timed=False)
    assert not wrong["passed"] and wrong["forward_error"] > 10 * kernel_check.FORWARD_TOLERANCE
    assert "kernel_fwd_bwd_ms" not in wrong

    failing = kernel_check.check_kernel("cudnn", HEADS, 64, device)  # cuDNN cannot run on CPU devices
    assert not failing["passed"] and all(case["error"] for case in failing["cases"])


def test_the_measured_config_is_one_micro_batch_of_the_config(tmp_path):
    cfg = load_config(GPU_CONFIG)
    plan = doctor.plan_checks(cfg, "gpu.yaml", 20)
    assert (plan.pairs, plan.rows, plan.length, plan.config_grad_accum_steps) == (8, 16, 4096, 128)
    assert plan.cfg.train.grad_accum_steps == 1 and plan.cfg.data.global_batch_size == 8 and plan.cfg.train.steps == 20
    assert plan.init_checkpoint == "" and "not found" in plan.weights
    weights = tmp_path / "llama"
    weights.mkdir()
    present = doctor.plan_checks(load_config(GPU_CONFIG, [f"train.init_checkpoint={weights}"]), "gpu.yaml", 20)
    assert present.init_checkpoint == str(weights) and present.weights == f"train.init_checkpoint {weights}"
    with pytest.raises(UserError, match="--steps must be >= 1"):
        doctor.plan_checks(cfg, "gpu.yaml", 0)
    packed = load_config(GPU_CONFIG, ["data.packing=packed", "data.length_buckets=[]"])
    with pytest.raises(UserError, match="data.packing=packed"):
        doctor.plan_checks(packed, "gpu.yaml", 20)


def test_full_length_batch_has_no_padding_and_shares_each_prompt():
    cfg = load_config(REPO / TINY_CONFIG)
    batch = full_length_batch(cfg, pairs=3, length=32)
    assert batch["tokens"].shape == (3, 2, 32) and batch["segment_ids"].all()
    assert (batch["positions"] == np.arange(32)).all() and not batch["loss_mask"][:, :, :8].any()
    assert batch["loss_mask"][:, :, 8:].all() and (batch["tokens"][:, 0, :8] == batch["tokens"][:, 1, :8]).all()
    iopo = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, loss_type=("iopo",)))
    assert full_length_batch(iopo, pairs=1, length=16)["tokens"].shape == (1, 4, 16)


def test_peak_memory_is_the_largest_device_peak():
    def device(peak, limit):
        return SimpleNamespace(platform="gpu", memory_stats=lambda: {"peak_bytes_in_use": peak, "bytes_limit": limit})

    assert doctor._peak_memory([device(5, 80), device(7, 80)]) == {"peak_memory_bytes": 7, "memory_limit_bytes": 80}
    cpu = SimpleNamespace(platform="cpu", memory_stats=lambda: None)
    assert doctor._peak_memory([cpu])["peak_memory_bytes"] is None


def test_failures_are_reported_and_the_kernel_check_runs_after_a_failed_step(monkeypatch):
    def fails(plan, devices):
        raise RuntimeError("cuDNN said no\nmore detail")

    monkeypatch.setattr(doctor, "measure_train_steps", fails)
    kernels = {  # what check_kernel (tested above) reports when a case raises
        "kernel": "xla",
        "reference": "blockwise",
        "dtype": "bfloat16",
        "tolerance": {"forward": 0.02, "gradients": 0.03},
        "cases": [{"case": "packed", "passed": False, "error": "XlaRuntimeError: no packed layout"}],
        "passed": False,
    }
    monkeypatch.setattr(kernel_check, "check_kernel", lambda *_: dict(kernels))
    cfg = load_config(REPO / TINY_CONFIG, ["data.max_length=64", "data.length_buckets=[64]"])
    report = doctor.run_checks(doctor.plan_checks(cfg, TINY_CONFIG, 1), "cpu")
    assert report["train_steps"]["error"] == "RuntimeError: cuDNN said no" and not report["passed"]
    assert report["attention_kernels"]["cases"] == kernels["cases"]
    assert "stands in" in report["attention_kernels"]["stand_in"]
    printed = doctor.format_report(report)
    assert "train steps: FAILED: RuntimeError: cuDNN said no" in printed
    assert "packed: FAILED: XlaRuntimeError: no packed layout" in printed


def test_doctor_refuses_a_multi_host_job(monkeypatch):
    monkeypatch.setattr(doctor, "platform_process_count", lambda: 4)
    cfg = load_config(REPO / TINY_CONFIG)
    with pytest.raises(UserError, match="this job has 4 processes"):
        doctor.run_checks(doctor.plan_checks(cfg, TINY_CONFIG, 1), "cpu")
