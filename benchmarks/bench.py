"""`rpo-jax bench`: step time, tokens/s, MFU, memory and compile time of the real jitted train step.

    rpo-jax bench --model tiny --seq-len 512 --batch 4 --loss dpo --reference separate --output bench.json
    rpo-jax bench --model tiny --compare trl          # same weights, batch and dtype through TRL 1.16 (torch, CPU)
    rpo-jax bench --model tiny --compare references   # separate vs precomputed vs LoRA-disabled base, one run
    rpo-jax bench --compare packing --pairs P.jsonl --seq-len 1024   # padded vs packed vs shared prompt, one run
    rpo-jax bench --compare generate --hf-dir HF   # generate and eval --checkpoint vs transformers.generate, tok/s
    rpo-jax bench --sweep seq                          # scaling sweeps + PNG plots (see benchmarks/sweep.py)

Step time is the median over `--steps` timed steps after `--warmup` steps (compile time reported separately).
MFU = model FLOPs (docs/algorithms.md §7, remat excluded) / (step time · devices · peak), with the peak measured in the
same process by a large matmul of the step's dtype: the fastest of its runs before the steps, between them and after
them (before and after, repeated until the best time settles; `benchmarks/matmul_probe.py`), and on known
accelerators also against the published chip peak. An MFU above 100 % means the peak was under-measured: the bench
reports it as an error (exit status 1, `mfu` null and `mfu_error` in the JSON), never as a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import generate_bench, matmul_probe, workload
from data_pipeline.errors import UserError
from rpo_jax.plan import flops as flops_mod

REFERENCE_MODES = ("separate", "precomputed", "lora_base")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model (a preset or YAML, optionally with inline dimensions overriding it)")
    m.add_argument("--model", default="tiny", help="preset name in configs/model/ or a YAML path")
    for flag in workload.INLINE_DIMS:
        m.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=int, default=None, help="override (default: the preset's)"
        )
    m.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="parameter and compute dtype (both frameworks)",
    )
    m.add_argument("--remat", default="none", help="model.remat_policy (none, minimal, full, ...)")
    w = parser.add_argument_group("workload")
    w.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    w.add_argument("--batch", type=int, default=4, help="preference groups per step (rows = batch·G)")
    w.add_argument("--loss", choices=tuple(workload.LOSS_TYPES), default="dpo", help="dpo/rpo: G=2, iopo: G=4")
    w.add_argument("--reference", choices=REFERENCE_MODES, default="separate", help="train.reference_mode")
    w.add_argument("--lora-rank", type=int, default=16, help="LoRA rank for --reference lora_base")
    w.add_argument("--logits-chunk-size", type=int, default=1024, help="loss.logits_chunk_size")
    w.add_argument(
        "--vocab-chunk-size",
        type=int,
        default=0,
        help="loss.vocab_chunk_size (0 = auto from V and positions per chunk; >= V = whole vocabulary at once)",
    )
    w.add_argument("--steps", type=int, default=5, help="timed steps (>= 5)")
    w.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    w.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic batch")
    w.add_argument(
        "--num-devices",
        type=int,
        default=0,
        help="devices in the mesh (0 = auto: 1 on CPU, where fake devices share the same cores; else all)",
    )
    w.add_argument("--matmul-size", type=int, default=0, help="peak-FLOPs matmul size (0: 2048 on CPU, 8192 else)")
    parser.add_argument(
        "--compare",
        action="append",
        choices=("trl", "references", "attention", "packing", "generate"),
        default=[],
        help="trl: TRL DPOTrainer on the same weights/batch; references: all reference modes; "
        "attention: model.attention xla vs blockwise (benchmarks/attention_sweep.py); "
        "packing: padded vs packed vs packed_shared_prompt on --pairs (benchmarks/packing_bench.py); "
        "generate: decoding tokens/s of generate and eval vs transformers.generate (benchmarks/generate_bench.py) "
        "(default: none)",
    )
    generate_bench.add_arguments(parser)
    parser.add_argument(
        "--pairs", default="", help="--compare packing: the pair JSONL to tokenize and train on (default: none)"
    )
    parser.add_argument(
        "--sweep",
        choices=("seq", "vocab", "size", "attention"),
        default=None,
        help="run a scaling sweep instead (benchmarks/sweep.py; default: one measurement)",
    )
    parser.add_argument("--sweep-points", default="", help="comma-separated sweep values (default: the sweep's own)")
    parser.add_argument("--plot-dir", default=str(workload.REPO / "docs"), help="where sweep PNGs go")
    parser.add_argument("--plot-name", default="", help="sweep PNG file name (default: bench_sweep_<kind>.png)")
    parser.add_argument("--output", default="", help="write the results as JSON here (default: print only)")
    parser.add_argument(
        "--run-budget-gb",
        type=float,
        default=4.0,
        help="--compare attention: compile but do not run an implementation whose compiled peak exceeds this",
    )


def _check(args) -> None:
    if args.steps < 5:
        raise UserError("--steps must be >= 5 (the median needs several timed steps)")
    if args.warmup < 0 or args.batch < 1:
        raise UserError("--warmup must be >= 0 and --batch >= 1")
    if "trl" in args.compare and args.loss == "iopo":
        raise UserError("--compare trl needs a G=2 loss (dpo or rpo); TRL has no 4-row groups")
    if "trl" in args.compare and args.reference == "lora_base":
        raise UserError("--compare trl with lora_base needs peft, which is not installed")


def _device_facts(devices) -> dict:
    import jax

    d = devices[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "num_devices": len(devices),
        "local_devices_available": jax.local_device_count(),
    }


def _versions() -> dict:
    import flax
    import jax
    import jaxlib
    import numpy
    import optax

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _perf(
    step_time: float, cfg, batch: dict, reference_mode: str, num_devices: int, peak: float, chip_peak: float | None
) -> dict:
    lengths = workload.row_lengths(batch)
    units = flops_mod.step_flop_units(reference_mode, cfg.lora.rank > 0)
    model_flops = units * flops_mod.forward_flops(cfg.model, lengths)
    out = {
        "tokens_per_step": int(lengths.sum()),
        "tokens_per_s": float(lengths.sum() / step_time),
        "pad_frac": float(1.0 - lengths.sum() / batch["tokens"].size),
        "model_flops_per_step": model_flops,
        "flop_units": units,
        "mfu": model_flops / (step_time * num_devices * peak),
    }
    out["mfu_vs_chip_peak"] = model_flops / (step_time * num_devices * chip_peak) if chip_peak else None
    return out


def _run_trl(args, prepared, examples: list[dict], tmp: Path) -> dict:
    from rpo_jax.io.hf_export import export_hf

    policy = prepared.policy
    hf_dir = tmp / "hf"
    # policy.trainable still holds the initial weights (the step's donated state is a separate buffer).
    export_hf(
        policy.merged_params(policy.trainable, policy.frozen),
        prepared.cfg.model,
        prepared.cfg.lora,
        hf_dir,
        dtype=args.dtype,
    )
    spec = {
        "hf_dir": str(hf_dir),
        "examples": examples,
        "dtype": args.dtype,
        "beta": prepared.cfg.loss.beta,
        "reference_mode": args.reference,
        "warmup": args.warmup,
        "steps": args.steps,
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    result_path = tmp / "trl.json"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.trl_step", str(tmp / "spec.json"), str(result_path)],
        cwd=workload.REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"TRL benchmark subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result_path.read_text())


def _write_json(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)


def run(args) -> int:
    if args.sweep == "attention":
        from benchmarks import attention_sweep

        return attention_sweep.run(args)
    if args.sweep:
        from benchmarks import sweep

        return sweep.run(args)
    _check(args)
    if "packing" in args.compare:
        from benchmarks import packing_bench

        result = packing_bench.run(args)
        print(packing_bench.summary(result))
        packing_bench.plot(result, Path(args.plot_dir) / (args.plot_name or "bench_packing.png"))
        if args.output:
            _write_json(args.output, result)
        return 0
    if "generate" in args.compare:
        result = generate_bench.run(args)
        print(generate_bench.summary(result))
        if args.output:
            _write_json(args.output, result)
        return 0
    if "attention" in args.compare:
        from benchmarks import attention_sweep

        point = attention_sweep.compare_point(args)
        print(attention_sweep.summary(point))
        if args.output:
            _write_json(args.output, point)
        return 0
    import jax

    from benchmarks import jax_step
    from rpo_jax.objective.logps import chunk_shape

    load_start = workload.load_average()
    baseline_rss = workload.current_rss_bytes()
    on_cpu = jax.default_backend() == "cpu"
    devices = jax.devices()[: args.num_devices or (1 if on_cpu else len(jax.devices()))]
    matmul_size = args.matmul_size or (2048 if on_cpu else 8192)
    probe = matmul_probe.make_matmul_probe(devices[0], args.dtype, matmul_size)
    peak_before = matmul_probe.measure_until_stable(probe)

    _, G = workload.LOSS_TYPES[args.loss]
    examples = workload.make_examples(args.batch, G, args.seq_len, workload.model_config(args).vocab_size, args.seed)
    modes = [args.reference] + (
        [m for m in REFERENCE_MODES if m != args.reference] if "references" in args.compare else []
    )
    prepared = {}
    for mode in modes:
        cfg = workload.run_config(args, mode, args.warmup + args.steps)
        batch = workload.make_batch(examples, G, args.seq_len, args.seed, with_ref=mode == "precomputed")
        prepared[mode] = jax_step.prepare(cfg, batch, devices)
    probe_times = jax_step.time_steps(prepared, args.warmup, args.steps, probe)
    peak_rss = workload.peak_rss_bytes()
    peak_after = matmul_probe.measure_until_stable(probe)
    peak_interleaved = matmul_probe.matmul_peak(probe, probe_times)
    peak = max(m["flops_per_s"] for m in (peak_before, peak_interleaved, peak_after))
    chip_peak = flops_mod.chip_peak_flops(devices[0].device_kind, args.dtype)

    main = prepared[args.reference]
    cfg = main.cfg
    result = {
        "command": shlex.join(["rpo-jax", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else shlex.join(sys.argv),
        "device": _device_facts(devices),
        "machine": workload.machine(),
        "versions": _versions(),
        "load_average_start": load_start,
        "model": {
            "preset": args.model,
            "vocab_size": cfg.model.vocab_size,
            "hidden_size": cfg.model.hidden_size,
            "intermediate_size": cfg.model.intermediate_size,
            "layers": cfg.model.num_hidden_layers,
            "heads": cfg.model.num_attention_heads,
            "kv_heads": cfg.model.num_key_value_heads,
            "head_dim": cfg.model.head_dim,
            "tie_word_embeddings": cfg.model.tie_word_embeddings,
            "matmul_params": flops_mod.matmul_params(cfg.model),
            "embedding_params": cfg.model.vocab_size * cfg.model.hidden_size,
        },
        "workload": {
            "seq_len": args.seq_len,
            "batch": args.batch,
            "group_size": G,
            "loss": args.loss,
            "loss_type": list(cfg.loss.loss_type),
            "reference": args.reference,
            "dtype": args.dtype,
            "remat": args.remat,
            "logits_chunk_size": args.logits_chunk_size,
            "vocab_chunk_size": args.vocab_chunk_size,
            "vocab_chunk_width": chunk_shape(
                args.batch * G, args.seq_len, cfg.model.vocab_size, args.logits_chunk_size, args.vocab_chunk_size
            )[1],
            "lora_rank": cfg.lora.rank,
            "warmup": args.warmup,
            "steps": args.steps,
        },
        **jax_step.step_result(main),
        **_perf(
            jax_step.step_result(main)["step_time_s"], cfg, main.batch_np, args.reference, len(devices), peak, chip_peak
        ),
        "peak_memory_bytes": peak_rss,
        "peak_memory_covers_modes": list(prepared),  # process RSS: every mode prepared in this run counts
        "baseline_rss_bytes": baseline_rss,
        "compiled_peak_bytes": main.memory.get("compiled_peak_bytes"),
        "matmul_peak": {
            "size": matmul_size,
            "dtype": args.dtype,
            "before": peak_before,
            "after": peak_after,
            "interleaved": peak_interleaved,
            "used_flops_per_s": peak,
            "threads": len(os.sched_getaffinity(0)) if on_cpu else None,
        },
        "chip_peak_flops_per_s": chip_peak,
    }
    if "references" in args.compare:
        modes_out = {}
        for mode, p in prepared.items():
            r = jax_step.step_result(p)
            modes_out[mode] = {**r, **_perf(r["step_time_s"], p.cfg, p.batch_np, mode, len(devices), peak, chip_peak)}
        t = {m: modes_out[m]["step_time_s"] for m in modes_out}
        result["reference_modes"] = modes_out
        result["precomputed_speedup_vs_separate"] = t["separate"] / t["precomputed"]
        result["lora_base_speedup_vs_separate"] = t["separate"] / t["lora_base"]
        result["precomputed_speedup_vs_lora_base"] = t["lora_base"] / t["precomputed"]
    if "trl" in args.compare:
        with tempfile.TemporaryDirectory(prefix="rpo-bench-") as tmp:
            load_trl = workload.load_average()
            trl = _run_trl(args, main, examples, Path(tmp))
        result.update(trl)
        result["load_average_trl_start"] = load_trl
        result["step_time_ratio_vs_trl"] = result["step_time_s"] / trl["trl_step_time_s"]
        result["peak_memory_ratio_vs_trl"] = peak_rss / trl["trl_peak_memory_bytes"]
        result["peak_memory_above_baseline_ratio_vs_trl"] = (peak_rss - baseline_rss) / max(
            trl["trl_peak_memory_bytes"] - trl["trl_baseline_rss_bytes"], 1
        )
        if args.loss == "rpo":
            result["trl_note"] = "TRL has no RPO margin; it runs loss_type=sigmoid (same forward/backward cost)"
    result["load_average_end"] = workload.load_average()
    errors = impossible_mfus(result)
    if errors:
        result["mfu_error"] = "; ".join(errors)
    print(summary(result))
    if args.output:
        _write_json(args.output, result)
    if errors:
        print(f"error: {result['mfu_error']}", file=sys.stderr)
        return 1
    return 0


def impossible_mfus(result: dict) -> list[str]:
    """Every MFU above 100 % in `result` (set to None there), each as a one-line reason: a step cannot do more
    FLOPs per second than the peak it is divided by, so the peak was under-measured (or the FLOPs over-counted)."""
    errors = []
    places = [("", result)] + [(f"reference_modes.{m}.", r) for m, r in result.get("reference_modes", {}).items()]
    for prefix, place in places:
        for key, peak_name in (("mfu", "the measured matmul peak"), ("mfu_vs_chip_peak", "the chip's published peak")):
            if place.get(key) is not None and place[key] > 1.0:
                peak = result["matmul_peak"]["used_flops_per_s"] if key == "mfu" else result["chip_peak_flops_per_s"]
                errors.append(
                    f"{prefix}{key} {place[key]:.1%} exceeds 100 %: the step ran "
                    f"{place['model_flops_per_step'] / place['step_time_s'] / 1e9:.1f} GFLOP/s against "
                    f"{peak_name} {peak / 1e9:.1f} GFLOP/s"
                )
                place[key] = None
    return errors


def summary(r: dict) -> str:
    gib = 1024**3
    mfu = "n/a (see the error)" if r["mfu"] is None else f"{r['mfu']:.1%}"
    lines = [
        f"step {r['step_time_s'] * 1e3:.1f} ms (median of {len(r['step_times_s'])}), "
        f"{r['tokens_per_s']:.0f} tok/s, MFU {mfu} of measured "
        f"{r['matmul_peak']['used_flops_per_s'] / 1e9:.1f} GFLOP/s, compile {r['compile_time_s']:.1f} s, "
        f"peak RSS {r['peak_memory_bytes'] / gib:.2f} GiB, compiled peak "
        f"{(r['compiled_peak_bytes'] or 0) / gib:.3f} GiB, load {r['load_average_start']}"
    ]
    if "trl_step_time_s" in r:
        lines.append(
            f"TRL step {r['trl_step_time_s'] * 1e3:.1f} ms, peak RSS {r['trl_peak_memory_bytes'] / gib:.2f} "
            f"GiB; ours/TRL: time {r['step_time_ratio_vs_trl']:.2f}x, "
            f"memory {r['peak_memory_ratio_vs_trl']:.2f}x"
        )
    if "reference_modes" in r:
        lines.append(
            ", ".join(f"{m} {v['step_time_s'] * 1e3:.1f} ms" for m, v in r["reference_modes"].items())
            + f"; precomputed speed-up vs separate {r['precomputed_speedup_vs_separate']:.2f}x"
        )
    return "\n".join(lines)
