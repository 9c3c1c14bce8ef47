"""The mechanism experiment's report: per arm and noise rate, mirror-unit accuracy and best-of-N reranking accuracy
on the test instructions, overall and by K, with 95% intervals over seeds and instructions (a two-level bootstrap,
`experiments.stats.seed_prompt_interval`), and RPO minus every other arm, paired by seed and instruction. Written as
`results.json`, `report.md`, `mechanism.png` and `items.jsonl.gz` (every item's verdict for every run, so any
interval can be recomputed) in the output folder."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np

from data_pipeline.files import write_json_atomic, write_text_atomic
from experiments.mechanism_config import MechanismConfig
from experiments.stages import Stage, StageStore
from experiments.stats import seed_prompt_difference, seed_prompt_interval
from rpo_jax.train.run_log import save_figure

METRICS = {"mirror": "unit", "best_of_n": "best_of_n"}  # metric -> item kind
LABELS = {"mirror": "mirror-unit accuracy", "best_of_n": "best-of-N accuracy"}
PACKAGES = ("jax", "flax", "optax", "numpy")


def read_items(stage: Stage) -> list[dict]:
    return [json.loads(line) for line in stage.file("items.jsonl").read_text(encoding="utf-8").splitlines()]


def item_arrays(runs: list[list[dict]], kind: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(passed [seeds, instructions], counts [seeds, instructions]) of one arm's runs (one per seed); `k` keeps
    the instructions with K = k."""
    keys = sorted({i["instruction"] for i in runs[0] if i["kind"] == kind and (k is None or i["k"] == k)})
    column = {key: p for p, key in enumerate(keys)}
    passed, counts = np.zeros((len(runs), len(keys))), np.zeros((len(runs), len(keys)))
    for s, items in enumerate(runs):
        for item in items:
            if item["kind"] == kind and item["instruction"] in column:
                passed[s, column[item["instruction"]]] += item["right"]
                counts[s, column[item["instruction"]]] += 1
    return passed, counts


def cell(runs, kind, k, replicates, seed) -> dict:
    passed, counts = item_arrays(runs, kind, k)
    if not counts.size:
        return {}
    out = seed_prompt_interval(passed, counts, replicates=replicates, seed=seed)
    per_seed = (passed.sum(axis=1) / counts.sum(axis=1)).tolist()
    return out | {"per_seed": per_seed, "instructions": int(counts.shape[1]), "items": int(counts[0].sum())}


def difference(runs_a, runs_b, kind, k, replicates, seed) -> dict:
    (a, counts), (b, _) = item_arrays(runs_a, kind, k), item_arrays(runs_b, kind, k)
    return seed_prompt_difference(a, b, counts, replicates=replicates, seed=seed) if counts.size else {}


def arm_results(cfg: MechanismConfig, runs: dict, replicates: int, seed: int) -> dict:
    """noise rate -> arm -> metric -> {"all": interval, "by_k": {k: interval}}, plus "rpo-<arm>" differences."""
    ks = range(cfg.data.min_k, cfg.data.max_k + 1)
    out = {}
    for noise, rate in enumerate(cfg.data.noise_rates):
        level = {}
        for arm in cfg.train.arms:
            level[arm] = {
                metric: {"all": cell(runs[arm, noise], kind, None, replicates, seed)}
                | {"by_k": {k: cell(runs[arm, noise], kind, k, replicates, seed) for k in ks}}
                for metric, kind in METRICS.items()
            }
        if "rpo" in cfg.train.arms:
            for arm in (a for a in cfg.train.arms if a != "rpo"):
                level[f"rpo-{arm}"] = {
                    metric: {"all": difference(runs[arm, noise], runs["rpo", noise], kind, None, replicates, seed)}
                    | {
                        "by_k": {
                            k: difference(runs[arm, noise], runs["rpo", noise], kind, k, replicates, seed) for k in ks
                        }
                    }
                    for metric, kind in METRICS.items()
                }
        out[str(rate)] = level
    return out


def _plot(results: dict, cfg: MechanismConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(results)
    fig, axes = plt.subplots(2, len(rates), figsize=(5.5 * len(rates), 8), squeeze=False)
    for col, rate in enumerate(rates):
        for row, (metric, label) in enumerate(
            (("mirror", "mirror-unit accuracy"), ("best_of_n", "best-of-N accuracy"))
        ):
            ax = axes[row][col]
            for offset, arm in enumerate(cfg.train.arms):
                by_k = results[rate][arm][metric]["by_k"]
                ks = [k for k in by_k if by_k[k]]
                ys = [by_k[k]["accuracy"] for k in ks]
                err = [[y - by_k[k]["low"] for k, y in zip(ks, ys)], [by_k[k]["high"] - y for k, y in zip(ks, ys)]]
                xs = [int(k) + 0.07 * (offset - len(cfg.train.arms) / 2) for k in ks]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=arm)
            if metric == "mirror":
                ax.axhline(0.5, color="grey", linestyle=":", label="chance")
            ax.set_title(f"{label}, DPO noise rate {rate}")
            ax.set_xlabel("constraints per test instruction (K)")
            ax.set_ylabel(f"{label} (95% CI, seeds x instructions)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _interval(r: dict) -> str:
    return f"{r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if r else "–"


def _delta(r: dict) -> str:
    return f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]" if r else "–"


def _markdown(results: dict, cfg: MechanismConfig) -> str:
    lines = [f"# {cfg.name}", "", "Test instructions; 95% intervals over seeds and instructions.", ""]
    for rate, level in results["arms"].items():
        lines += [
            f"## DPO noise rate {rate}",
            "",
            "| arm | mirror-unit accuracy | best-of-N accuracy |",
            "|---|---|---|",
        ]
        for arm in cfg.train.arms:
            lines.append(
                f"| {arm} | {_interval(level[arm]['mirror']['all'])} | {_interval(level[arm]['best_of_n']['all'])} |"
            )
        for name in (n for n in level if n.startswith("rpo-")):
            lines.append(
                f"| {name} | {_delta(level[name]['mirror']['all'])} | {_delta(level[name]['best_of_n']['all'])} |"
            )
        lines.append("")
    lines.append(f"Stage wall times (s): {', '.join(f'{n} {s:.0f}' for n, s in results['seconds'].items())}")
    return "\n".join(lines) + "\n"


def write_mechanism_report(store, cfg: MechanismConfig, heldout: Stage, data: list, scores: dict, selection) -> Path:
    replicates, seed = cfg.report.bootstrap_replicates, cfg.report.seed
    stages = [heldout, *data, *scores.values()]

    def build(folder: Path) -> dict:
        runs = {
            (arm, noise): [read_items(scores[arm, noise, s]) for s in cfg.train.seeds]
            for arm in cfg.train.arms
            for noise in range(len(cfg.data.noise_rates))
        }
        results = {
            "name": cfg.name,
            "config": dataclasses.asdict(cfg),
            "arms": arm_results(cfg, runs, replicates, seed),
            "training_data": {str(r): d.summary for r, d in zip(cfg.data.noise_rates, data, strict=True)},
            "heldout": heldout.summary,
            "learning_rate_selection": selection,
            "seconds": {s.name: s.seconds for s in store_stages(store)},
            "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
        }
        write_json_atomic(folder / "results.json", results)
        write_text_atomic(folder / "report.md", _markdown(results, cfg))
        _plot(results["arms"], cfg, folder / "mechanism.png")
        with gzip.GzipFile(folder / "items.jsonl.gz", "wb", compresslevel=9, mtime=0) as out:
            for (arm, noise, s), stage in sorted(scores.items()):
                for item in read_items(stage):
                    out.write(
                        (
                            json.dumps({"arm": arm, "noise_rate": cfg.data.noise_rates[noise], "seed": s} | item) + "\n"
                        ).encode()
                    )
        return {"files": sorted(p.name for p in folder.iterdir())}

    report = store.run("report", dataclasses.asdict(cfg.report), tuple(stages), build)
    out = store.root.parent
    for name in report.summary["files"]:
        if name != "stage.json":
            shutil.copyfile(report.file(name), out / name)
    return out


def store_stages(store: StageStore) -> list[Stage]:
    """Every finished stage of the experiment folder (their wall times go into the results)."""
    found = []
    for record in sorted(store.root.glob("*/stage.json")):
        meta = json.loads(record.read_text())
        found.append(Stage(meta["name"], meta["key"], record.parent, meta["summary"], meta["seconds"], cached=True))
    return found
