"""Scaling sweeps for `rpo-jax bench --sweep {seq,vocab,size}`: step time and memory per point, one PNG per sweep.

Each point runs `rpo-jax bench` in a fresh process, so its peak RSS is its own. Every other bench flag (model,
batch, loss, reference, dtype, steps, ...) is passed through; `--sweep-points` overrides the default values:

    seq    --seq-len 256,512,1024,2048,4096
    vocab  --vocab 32000,64000,128000
    size   model sizes tiny (4M), small (~20M), medium (~50M), 100m (~125M incl. embedding), see SIZES

The plot goes to `--plot-dir/--plot-name` (default `bench_sweep_<kind>.png`), the per-point results to
`--output` (JSON) when given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import workload
from data_pipeline.errors import UserError
from rpo_jax.train.run_log import save_figure

# Llama shapes (inline dims) for the size sweep; vocabulary comes from --model / --vocab (32k for tiny).
SIZES = {
    "tiny": {},
    "small": {"hidden_size": 256, "intermediate_size": 768, "layers": 4, "heads": 4, "kv_heads": 2, "head_dim": 64},
    "medium": {"hidden_size": 512, "intermediate_size": 1408, "layers": 8, "heads": 8, "kv_heads": 4, "head_dim": 64},
    "100m": {"hidden_size": 768, "intermediate_size": 2048, "layers": 12, "heads": 12, "kv_heads": 4, "head_dim": 64},
}
DEFAULT_POINTS = {"seq": "256,512,1024,2048,4096", "vocab": "32000,64000,128000", "size": "tiny,small,medium,100m"}
PASS_THROUGH = (
    "model",
    "dtype",
    "remat",
    "seq_len",
    "batch",
    "loss",
    "reference",
    "lora_rank",
    "logits_chunk_size",
    "vocab_chunk_size",
    "steps",
    "warmup",
    "seed",
    "num_devices",
    "matmul_size",
    *workload.INLINE_DIMS,
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def point_args(args, kind: str, value: str) -> tuple[float | str, dict]:
    """(x value for the plot, bench flags for this point)."""
    flags = {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name) is not None}
    if kind == "seq":
        flags["seq_len"] = int(value)
        return int(value), flags
    if kind == "vocab":
        flags["vocab"] = int(value)
        return int(value), flags
    if value not in SIZES:
        raise UserError(f"--sweep size: unknown size {value!r}; choose from {sorted(SIZES)}")
    flags.update(SIZES[value])
    return value, flags


def run_point(flags: dict, tmp: Path) -> dict:
    out = tmp / "point.json"
    cmd = [
        sys.executable,
        "-m",
        "rpo_jax.cli",
        "bench",
        *(f"{_flag(k)}={v}" for k, v in flags.items()),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=workload.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep point failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    print(proc.stdout.strip(), flush=True)
    return json.loads(out.read_text())


def plot(kind: str, points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(p["x"]) for p in points]
    xs = list(range(len(points))) if kind == "size" else [p["x"] for p in points]
    gib = 1024**3
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    ax_t.plot(xs, [p["step_time_s"] for p in points], "o-", label="step time (median)")
    ax_t.set_ylabel("seconds per step")
    ax_m.plot(xs, [p["peak_memory_bytes"] / gib for p in points], "o-", label="process peak RSS")
    ax_m.plot(xs, [p["compiled_peak_bytes"] / gib for p in points], "s-", label="XLA compiled peak")
    ax_m.plot(xs, [p["memory_analysis"]["temp_size_in_bytes"] / gib for p in points], "^-", label="XLA temporaries")
    ax_m.plot(
        xs, [p["non_vocab_temp_bytes"] / gib for p in points], "v--", label="temporaries − vocab-weight gradients"
    )
    ax_m.set_ylabel("GiB")
    for ax in (ax_t, ax_m):
        ax.set_xlabel({"seq": "sequence length L", "vocab": "vocabulary V", "size": "model"}[kind])
        if kind == "size":
            ax.set_xticks(xs, [f"{lb}\n{p['params_total'] / 1e6:.0f}M" for lb, p in zip(labels, points)])
        elif kind == "seq":
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = points[0]["workload"]
    fig.suptitle(
        f"rpo-jax train step, {kind} sweep: {first['loss']}, reference={first['reference']}, "
        f"batch={first['batch']}, {first['dtype']}, {points[0]['device']['backend']}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def run(args) -> int:
    if args.compare:
        raise UserError("--sweep and --compare are separate runs")
    kind = args.sweep
    values = [v.strip() for v in (args.sweep_points or DEFAULT_POINTS[kind]).split(",") if v.strip()]
    points = []
    with tempfile.TemporaryDirectory(prefix="rpo-sweep-") as tmp:
        for value in values:
            x, flags = point_args(args, kind, value)
            r = run_point(flags, Path(tmp))
            m = r["model"]
            # Gradients of the embedding and LM head scale with V by construction; what is left should not.
            vocab_params = m["embedding_params"] * (1 if m["tie_word_embeddings"] else 2)
            bytes_per = 2 if r["workload"]["dtype"] == "bfloat16" else 4
            r["non_vocab_temp_bytes"] = r["memory_analysis"]["temp_size_in_bytes"] - vocab_params * bytes_per
            r["params_total"] = (
                m["matmul_params"] + m["embedding_params"] - (m["embedding_params"] if m["tie_word_embeddings"] else 0)
            )
            points.append({"x": x, **r})
    png = Path(args.plot_dir) / (args.plot_name or f"bench_sweep_{kind}.png")
    plot(kind, points, png)
    print(f"wrote {png}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        tmp_out.write_text(json.dumps({"sweep": kind, "points": points}, indent=1) + "\n")
        os.replace(tmp_out, out)
    return 0
