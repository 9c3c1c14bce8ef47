"""`rpo-jax bench --sweep attention`: step time and compiled temporaries of the real train step against the row
length, `model.attention=xla` (dense [L, L] scores) against `blockwise`, one PNG + JSON.

Each length runs `rpo-jax bench --compare attention --seq-len L` in a fresh process. That process prepares the
step once per implementation (same weights, batch and config otherwise), warms every one up, then times them
round-robin (one step of each per round, `benchmarks.jax_step.time_steps`), so load changes on a shared machine hit
both alike; step time is the median. An implementation whose compiled peak (XLA memory_analysis) exceeds
`--run-budget-gb` is compiled but not run: its temporaries are still reported, its step time is not.

    rpo-jax bench --sweep attention --sweep-points 1024,2048,4096,8192,16384 --batch 1 --loss rpo \\
        --output docs/bench_results/sweep_attention.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import workload
from rpo_jax.train.run_log import save_figure

IMPLEMENTATIONS = ("xla", "blockwise")
DEFAULT_POINTS = "1024,2048,4096,8192,16384"
PASS_THROUGH = ("model", "dtype", "remat", "batch", "loss", "reference", "lora_rank", "logits_chunk_size", "steps")
PASS_THROUGH += ("warmup", "seed", "run_budget_gb", *workload.INLINE_DIMS)
GIB = 2**30


def compare_point(args) -> dict:
    """One length, every implementation in this process (the `--compare attention` side of `rpo-jax bench`)."""
    import jax

    from benchmarks import jax_step

    devices = jax.devices()[:1]
    _, G = workload.LOSS_TYPES[args.loss]
    vocab = workload.model_config(args).vocab_size
    examples = workload.make_examples(args.batch, G, args.seq_len, vocab, args.seed)
    batch = workload.make_batch(examples, G, args.seq_len, args.seed, with_ref=args.reference == "precomputed")
    prepared, results = {}, {}
    for impl in IMPLEMENTATIONS:
        cfg = workload.run_config(args, args.reference, args.warmup + args.steps)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention=impl))
        step = jax_step.prepare(cfg, batch, devices)
        peak = step.memory["compiled_peak_bytes"]
        results[impl] = {"memory_analysis": step.memory, "compile_time_s": step.compile_s, "ran": True}
        if peak > args.run_budget_gb * GIB:
            results[impl].update(ran=False, why=f"compiled peak {peak / GIB:.1f} GiB > {args.run_budget_gb} GiB")
        else:
            prepared[impl] = step
    jax_step.time_steps(prepared, args.warmup, args.steps)
    for impl, step in prepared.items():
        results[impl].update(jax_step.step_result(step))
        results[impl]["tokens_per_s"] = float(workload.row_lengths(batch).sum() / results[impl]["step_time_s"])
    times = {impl: r["step_time_s"] for impl, r in results.items() if r["ran"]}
    return {
        "seq_len": args.seq_len,
        "rows": int(batch["tokens"].shape[0] * G),
        "implementations": results,
        "blockwise_speedup_vs_xla": times["xla"] / times["blockwise"] if len(times) == 2 else None,
        "peak_rss_bytes": workload.peak_rss_bytes(),
        "machine": workload.machine(),
        "load_average_end": workload.load_average(),
    }


def _point(args, seq_len: int, tmp: Path) -> dict:
    flags = {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name, None) is not None}
    out = tmp / f"point_{seq_len}.json"
    cmd = [sys.executable, "-m", "rpo_jax.cli", "bench", "--compare", "attention", f"--seq-len={seq_len}"]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()] + ["--output", str(out)]
    proc = subprocess.run(cmd, cwd=workload.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep point failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    point = json.loads(out.read_text())
    print(summary(point), flush=True)
    return point


def summary(point: dict) -> str:
    parts = []
    for impl, r in point["implementations"].items():
        temp = r["memory_analysis"]["temp_size_in_bytes"] / GIB
        timing = f"{r['step_time_s']:.2f} s/step" if r["ran"] else f"not run ({r['why']})"
        parts.append(f"{impl}: {timing}, temporaries {temp:.2f} GiB")
    return f"L={point['seq_len']}: " + "; ".join(parts)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for impl, marker in zip(IMPLEMENTATIONS, ("o", "s")):
        ran = [p for p in points if p["implementations"][impl]["ran"]]
        ax_t.plot([p["seq_len"] for p in ran], [p["implementations"][impl]["step_time_s"] for p in ran], marker + "-")
        ax_t.lines[-1].set_label(impl)
        xs = [p["seq_len"] for p in points]
        temps = [p["implementations"][impl]["memory_analysis"]["temp_size_in_bytes"] / GIB for p in points]
        ax_m.plot(xs, temps, marker + "-", label=f"{impl} (hollow: compiled, not run)")
        hollow = [(x, t) for x, t, p in zip(xs, temps, points) if not p["implementations"][impl]["ran"]]
        if hollow:
            ax_m.plot(*zip(*hollow), marker, mfc="white", color=ax_m.lines[-1].get_color())
    ax_t.set_ylabel("seconds per train step (median, interleaved)")
    ax_m.set_ylabel("XLA temporaries (GiB)")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("row length L (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = points[0]
    fig.suptitle(f"train step vs row length: xla vs blockwise attention, {first['rows']} rows, CPU", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def run(args) -> int:
    lengths = [int(v) for v in (args.sweep_points or DEFAULT_POINTS).split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="rpo-attention-sweep-") as tmp:
        points = [_point(args, L, Path(tmp)) for L in lengths]
    png = Path(args.plot_dir) / (args.plot_name or "bench_sweep_attention.png")
    plot(points, png)
    print(f"wrote {png}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        tmp_out.write_text(json.dumps({"sweep": "attention", "points": points}, indent=1) + "\n")
        os.replace(tmp_out, out)
    return 0
