"""`rpo-jax bench --compare packing --pairs PAIRS.jsonl --seq-len L`: padded vs packed vs packed_shared_prompt.

The pairs are tokenized with the run's tokenizer (the default one) at max_length L, `keep_start` truncation (so
every pair is kept, the long ones truncated as in training). Three loaders feed the real jitted train step:
`padded` = today's loader (`--batch` groups per step, length buckets L/4, L/2, 3L/4, L), `packed` and
`packed_shared_prompt` = `--batch` rows of G·L tokens (the same token budget as a full padded step). Steps run
round-robin (one of each mode per round), so load changes hit every mode alike; each new batch shape is compiled
before it is timed, and only step execution is timed. pairs/s = real pairs trained / timed seconds.

`max_rel_logp_diff`: the per-sequence log-probs of the first packed batches' examples under the initial weights,
packed and shared-prompt against the unpacked computation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import jax_step, workload
from data_pipeline.errors import UserError
from data_pipeline.records.build import build_shards
from data_pipeline.records.loader import CollatePairs, make_loader
from data_pipeline.records.packed_loader import make_packed_loader
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax.objective.logps import paired_logps
from rpo_jax.objective.packed_logps import PACKED_MODEL_FIELDS, packed_logps
from rpo_jax.plan.step_timing import PreparedStep
from rpo_jax.train.batches import MODEL_FIELDS
from rpo_jax.train.run_log import save_figure

MODES = ("padded", "packed", "packed_shared_prompt")


def _loaders(shards: Path, args) -> dict:
    L = args.seq_len
    buckets = tuple(sorted({L // 4, L // 2, 3 * L // 4, L}))
    common = dict(seed=args.seed, max_length=L)
    return {
        "padded": make_loader(shards, batch_size=args.batch, length_buckets=buckets, **common),
        "packed": make_packed_loader(shards, rows_per_batch=args.batch, shared_prompt=False, **common),
        "packed_shared_prompt": make_packed_loader(shards, rows_per_batch=args.batch, shared_prompt=True, **common),
    }


def _inputs(batch: dict) -> tuple[dict, int]:
    """The step's fields and the number of real pairs in the batch."""
    if batch["tokens"].ndim == 2:
        keys = [*PACKED_MODEL_FIELDS, "margin", "example_weight"] + (["prefix_ids"] if "prefix_ids" in batch else [])
        return {k: batch[k] for k in keys}, int(batch["example_weight"].sum())
    return {k: batch[k] for k in [*MODEL_FIELDS, "margin"]}, batch["tokens"].shape[0]


def _logp_diff(cfg, loaders_first: dict, records_by_index, pad_id: int) -> float:
    """Max relative difference of per-sequence log-probs, packed modes vs unpacked, on the packed batches' pairs."""
    from flax import nnx

    from rpo_jax.model.llama import Llama

    model = Llama(cfg.model, rngs=nnx.Rngs(0))
    worst = 0.0
    for batch in loaders_first.values():
        index = batch["example_index"]
        live = index >= 0
        packed = jax.tree.map(jnp.asarray, _inputs(batch)[0])
        got = np.asarray(packed_logps(model, packed, logits_chunk_size=1024).logps)
        records = [records_by_index(int(i)) for i in index[live]]
        longest = int(max(len(r) for rec in records for r in rec["rows"]))
        unpacked = CollatePairs(longest, pad_id, None)([{**rec, "pad_to": 0} for rec in records])
        ref = np.asarray(paired_logps(model, jax.tree.map(jnp.asarray, unpacked), logits_chunk_size=1024).logps)
        worst = max(worst, float(np.max(np.abs(got[live.reshape(-1)] - ref) / np.abs(ref))))
    return worst


def run(args) -> dict:
    if not args.pairs:
        raise UserError("--compare packing needs --pairs PAIRS.jsonl")
    with tempfile.TemporaryDirectory(prefix="rpo-jax-packing-") as tmp:
        shards = Path(tmp) / "shards"
        settings = TruncationSettings(args.seq_len, "keep_start")
        build_shards(Path(args.pairs), DEFAULT_TOKENIZER_DIR, shards, settings)
        manifest = read_manifest(shards)
        loaders = _loaders(shards, args)
        cfg = workload.run_config(args, args.reference, 10**6)
        devices = jax.devices()[:1]
        prepared: dict[tuple, PreparedStep] = {}
        stats = {m: {"pairs": 0, "seconds": 0.0, "steps": 0, "real_tokens": 0, "positions": 0} for m in MODES}
        first_packed = {}
        for round_index in range(args.warmup + args.steps):
            for mode in MODES:
                batch = next(loaders[mode])
                if mode != "padded" and mode not in first_packed:
                    first_packed[mode] = batch
                inputs, pairs = _inputs(batch)
                key = (mode, tuple(sorted((k, v.shape) for k, v in inputs.items())))
                if key not in prepared:  # compiled before it is timed
                    prepared[key] = jax_step.prepare(cfg, inputs, devices)
                step = prepared[key]
                step.batch = {k: jax.device_put(v, step.batch[k].sharding) for k, v in inputs.items()}
                elapsed = step.run()
                if round_index >= args.warmup:
                    s = stats[mode]
                    s["pairs"] += pairs
                    s["seconds"] += elapsed
                    s["steps"] += 1
                    s["real_tokens"] += int((inputs["segment_ids"] != 0).sum())
                    s["positions"] += int(inputs["segment_ids"].size)
        records = ShardRecords(shards, manifest)
        read = lambda i: records[i] | {"weight": 1.0}  # noqa: E731
        diff = _logp_diff(cfg, first_packed, read, manifest["pad_token_id"])
    result = {
        "benchmark": "packing",
        "pairs_file": str(args.pairs),
        "num_pairs": manifest["num_examples"],
        "seq_len": args.seq_len,
        "batch": args.batch,
        "model": args.model,
        "device": str(jax.devices()[0]),
        "manifest_packing": manifest["packing"],
        "modes": {},
        "max_rel_logp_diff": diff,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for mode in MODES:
        s = stats[mode]
        result["modes"][mode] = {
            **s,
            "pairs_per_s": s["pairs"] / s["seconds"],
            "step_time_s": s["seconds"] / s["steps"],
            "fill": s["real_tokens"] / s["positions"],
            "compiled_shapes": sum(1 for k in prepared if k[0] == mode),
        }
    rate = {m: result["modes"][m]["pairs_per_s"] for m in MODES}
    result["speedup_packed_vs_padded"] = rate["packed"] / rate["padded"]
    result["speedup_shared_vs_packed"] = rate["packed_shared_prompt"] / rate["packed"]
    result["packing_efficiency"] = {m: result["modes"][m]["fill"] for m in MODES}
    return result


def summary(r: dict) -> str:
    lines = [f"packing on {r['num_pairs']} pairs, L={r['seq_len']}, batch {r['batch']} ({r['device']})"]
    for mode, m in r["modes"].items():
        rate = f"{m['pairs_per_s']:8.2f} pairs/s  step {m['step_time_s']:.3f} s"
        lines.append(f"  {mode:22s} {rate}  fill {m['fill']:.3f}")
    lines.append(
        f"  packed/padded {r['speedup_packed_vs_padded']:.2f}x, shared/packed {r['speedup_shared_vs_packed']:.2f}x, "
        f"max rel logp diff {r['max_rel_logp_diff']:.2e}"
    )
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    """Pairs/s per mode (left) and the share of row positions holding a token (right)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_f) = plt.subplots(1, 2, figsize=(10, 3.6))
    modes = list(r["modes"])
    ax_r.bar(modes, [r["modes"][m]["pairs_per_s"] for m in modes], color=["#999", "#4a7", "#27a"])
    ax_r.set_ylabel("pairs / s (interleaved, same train step)")
    ax_f.bar(modes, [r["modes"][m]["fill"] for m in modes], color=["#999", "#4a7", "#27a"])
    ax_f.set_ylabel("row positions holding a token")
    ax_f.set_ylim(0, 1)
    for ax in (ax_r, ax_f):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{r['num_pairs']} pairs, L={r['seq_len']}, {r['batch']} groups or rows per step, {r['model']} model, "
        f"{r['device']}: packed {r['speedup_packed_vs_padded']:.2f}x padded, shared prompt "
        f"{r['speedup_shared_vs_packed']:.2f}x packed",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
