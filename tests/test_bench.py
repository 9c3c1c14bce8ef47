"""`rpo-jax bench`: the FLOPs formula against the model's own parameter count, and a smallest `--compare trl` run
whose JSON must have every required field filled and self-consistent (no timing thresholds)."""

import argparse
import json
import math
import statistics

import numpy as np
import pytest

from benchmarks import bench
from rpo_jax.config.schema import ModelConfig
from rpo_jax.model.llama import count_params
from rpo_jax.plan import flops

TINY_DIMS = dict(vocab=256, hidden_size=32, intermediate_size=64, layers=2, heads=4, kv_heads=2, head_dim=8)


def test_matmul_params_is_all_params_but_embedding_and_norms():
    cfg = ModelConfig(
        vocab_size=96,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
    )
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    assert flops.matmul_params(cfg) == count_params(cfg) - cfg.vocab_size * cfg.hidden_size - norms


def test_forward_flops_formula():
    cfg = ModelConfig(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
    )
    n = flops.matmul_params(cfg)
    expected = sum(2 * n * t + 2 * 2 * 8 * t * t for t in (5, 9))
    assert flops.forward_flops(cfg, np.array([5, 9])) == pytest.approx(expected)
    assert flops.step_flop_units("separate", False) == 4
    assert flops.step_flop_units("precomputed", False) == 3
    assert flops.step_flop_units("lora_base", True) == 3


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.torch
def test_compare_trl_writes_complete_json(tmp_path):
    out = tmp_path / "bench.json"
    dims = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_DIMS.items()]
    args = _parse(
        [
            *dims,
            "--seq-len",
            "32",
            "--batch",
            "2",
            "--steps",
            "5",
            "--warmup",
            "1",
            "--matmul-size",
            "256",
            "--compare",
            "trl",
            "--output",
            str(out),
        ]
    )
    assert bench.run(args) == 0
    r = json.loads(out.read_text())
    for key in (
        "step_time_s",
        "tokens_per_s",
        "mfu",
        "peak_memory_bytes",
        "compile_time_s",
        "compiled_peak_bytes",
        "trl_step_time_s",
        "trl_peak_memory_bytes",
        "step_time_ratio_vs_trl",
        "peak_memory_ratio_vs_trl",
    ):
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
    for key in ("device", "versions", "command", "load_average_start", "trl_versions"):
        assert r[key], key
    assert r["versions"]["jax"] and r["trl_versions"]["trl"].startswith("1.16")
    assert len(r["step_times_s"]) == 5 and len(r["trl_step_times_s"]) == 5
    assert r["step_time_s"] == pytest.approx(statistics.median(r["step_times_s"]))
    assert r["trl_step_time_s"] == pytest.approx(statistics.median(r["trl_step_times_s"]))
    assert r["step_time_ratio_vs_trl"] == pytest.approx(r["step_time_s"] / r["trl_step_time_s"])
    assert r["peak_memory_ratio_vs_trl"] == pytest.approx(r["peak_memory_bytes"] / r["trl_peak_memory_bytes"])
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
    # The batch's real tokens: every row of the first group is stretched to the full length in one row.
    assert 2 * 2 * 32 * 0.25 < r["tokens_per_step"] <= 2 * 2 * 32
    cfg = ModelConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    assert r["model"]["matmul_params"] == flops.matmul_params(cfg)
    assert r["mfu"] == pytest.approx(
        r["model_flops_per_step"] / (r["step_time_s"] * r["matmul_peak"]["used_flops_per_s"])
    )
    assert r["last_loss"] == pytest.approx(math.log(2), abs=0.05) and r["skipped_steps"] == 0


def _fake_probe(times):
    """A probe whose runs take the given times in turn (the last repeating), and its FLOPs per run."""
    it = iter(times)
    last = [times[-1]]

    def probe():
        last[0] = next(it, last[0])
        return last[0]

    probe.flops = 1e9
    return probe


def test_matmul_peak_is_the_fastest_run_once_it_stops_improving():
    from benchmarks import matmul_probe

    # A slow start (other load), then the machine's real speed: the peak is the fastest run, not the median.
    peak = matmul_probe.measure_until_stable(_fake_probe([4.0, 4.0, 4.0, 4.0, 4.0, 1.0, 1.01, 1.02, 1.0, 1.0, 1.0]))
    assert peak["stable"] and peak["flops_per_s"] == pytest.approx(1e9)
    assert peak["samples"] == 15  # settled on the third window of 5
    # A probe that keeps getting faster never settles: it says so.
    creeping = matmul_probe.measure_until_stable(_fake_probe([0.9**k for k in range(100)]), max_runs=20)
    assert not creeping["stable"] and creeping["samples"] == 20


def test_an_mfu_above_100_percent_is_an_error_not_a_figure():
    result = {
        "mfu": 3.527,
        "mfu_vs_chip_peak": None,
        "model_flops_per_step": 93e9,
        "step_time_s": 1.0,
        "matmul_peak": {"used_flops_per_s": 26.4e9},
        "chip_peak_flops_per_s": None,
        "reference_modes": {"precomputed": {"mfu": 0.4, "model_flops_per_step": 4e9, "step_time_s": 0.1}},
    }
    (error,) = bench.impossible_mfus(result)
    assert "mfu 352.7% exceeds 100 %" in error and "93.0 GFLOP/s" in error and "26.4 GFLOP/s" in error
    assert result["mfu"] is None and result["reference_modes"]["precomputed"]["mfu"] == 0.4
    assert bench.impossible_mfus({**result, "mfu": 0.93}) == []
