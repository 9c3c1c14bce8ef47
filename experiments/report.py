"""The experiment's report: accuracies with bootstrap intervals, paired differences, accuracy vs number of
constraints, pair statistics, cost per stage. Written as `results.json`, `report.md` and `accuracy_vs_k.png` in
the output folder (the `report` stage keeps a copy)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
from pathlib import Path

import numpy as np

from data_pipeline.files import write_json_atomic, write_text_atomic
from experiments.config import ExperimentConfig
from experiments.evaluation import read_verdicts
from experiments.multiturn import multiturn_results
from experiments.stages import Stage, StageStore
from experiments.stats import accuracy_interval, paired_difference
from rpo_jax.train.run_log import save_figure

COMPARISONS = (("rpo", "dpo"), ("dpo", "base"), ("rpo", "base"), ("iopo", "base"), ("rpo", "iopo"))
K_BUCKETS = ((1, 2), (3, 4), (5, 6), (7, 8))
PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "numpy")


def _passed_counts(verdicts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([sum(v["strict"]) for v in verdicts]), np.array([len(v["strict"]) for v in verdicts]))


def suite_results(evals: dict[str, Stage], suite: str, replicates: int, seed: int) -> dict:
    verdicts = {name: read_verdicts(stage, suite) for name, stage in evals.items()}
    keys = {name: [v["key"] for v in rows] for name, rows in verdicts.items()}
    if len({tuple(k) for k in keys.values()}) != 1:
        raise RuntimeError(f"{suite}: the models were scored on different prompts; paired comparison impossible")
    out = {"models": {}, "differences": {}}
    for name, rows in verdicts.items():
        out["models"][name] = evals[name].summary[suite] | {
            "intervals": accuracy_interval(*_passed_counts(rows), replicates=replicates, seed=seed)
        }
    for better, worse in COMPARISONS:
        if better in verdicts and worse in verdicts:
            out["differences"][f"{better}-{worse}"] = paired_difference(
                _passed_counts(verdicts[worse])[0], *_passed_counts(verdicts[better]), replicates=replicates, seed=seed
            )
    return out


def by_constraint_count(evals: dict[str, Stage], replicates: int, seed: int) -> dict:
    """Held-out strict accuracy per bucket of K (the paper's accuracy-vs-constraints curve), prompt and instruction
    level (a small model follows all of 5-8 constraints almost never, so the prompt-level curve sits at 0 there
    while the instruction-level one still moves). A bucket no held-out instruction falls in is empty."""
    out = {}
    for low, high in K_BUCKETS:
        bucket = {}
        for name, stage in evals.items():
            rows = [v for v in read_verdicts(stage, "heldout") if low <= len(v["strict"]) <= high]
            if rows:
                intervals = accuracy_interval(*_passed_counts(rows), replicates=replicates, seed=seed)
                bucket[name] = intervals | {"num_prompts": len(rows)}
        out[f"{low}-{high}"] = bucket
    return out


def _plot(by_k: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = sorted({name for bucket in by_k.values() for name in bucket})
    for ax, level in zip(axes, ("prompt", "instruction"), strict=True):
        for offset, name in enumerate(names):
            xs, ys, lows, highs = [], [], [], []
            for i, bucket in enumerate(by_k.values()):
                if name in bucket:
                    r = bucket[name][level]
                    xs.append(i + 0.08 * (offset - len(names) / 2))
                    ys.append(r["accuracy"])
                    lows.append(r["accuracy"] - r["low"])
                    highs.append(r["high"] - r["accuracy"])
            ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(by_k)), list(by_k))
        ax.set_xlabel("constraints per held-out instruction (K)")
        ax.set_ylabel(f"{level}-level strict accuracy (95% CI)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _suite_table(results: dict, title: str, rows: list[str], cell) -> list[str]:
    """A markdown table: one row per name in `rows`, one column per suite, `cell(suite_results, name)`."""
    suites = results["suites"]
    lines = ["", title, "", "| | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]
    for name in rows:
        lines.append(f"| {name} | " + " | ".join(cell(suite, name) for suite in suites.values()) + " |")
    return lines


def _interval(r: dict, digits: int) -> str:
    return f"{r['accuracy']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"


def _by_model_table(title: str, header: str, table: dict[str, dict], models: list[str]) -> list[str]:
    """One row per bucket (with its n), one column per model: prompt / instruction-level intervals."""
    lines = ["", title, "", f"| {header} | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for bucket_name, bucket in table.items():
        if bucket:  # every model is scored on the same prompts, so a bucket has all of them or none
            cells = [" / ".join(_interval(bucket[m][level], 2) for level in ("prompt", "instruction")) for m in models]
            lines.append(f"| {bucket_name} (n={bucket[models[0]]['num_prompts']}) | " + " | ".join(cells) + " |")
    return lines


def _markdown(results: dict) -> str:
    first = next(iter(results["suites"].values()))

    def accuracy(suite: dict, name: str) -> str:
        return _interval(suite["models"][name]["intervals"]["prompt"], 3)

    def difference(suite: dict, name: str) -> str:
        d = suite["differences"][name]["prompt"]
        return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    lines = [f"# {results['name']}"]
    lines += _suite_table(
        results, "Prompt-level strict accuracy (95% bootstrap CI over prompts):", first["models"], accuracy
    )
    lines += _suite_table(
        results, "Paired differences, prompt-level strict (95% CI):", first["differences"], difference
    )
    models = list(first["models"])
    if results["heldout_by_k"]:
        title = "Held-out strict accuracy by number of constraints K, prompt / instruction level (95% CI):"
        lines += _by_model_table(title, "K", results["heldout_by_k"], models)
    for name, table in results.get("multiturn", {}).items():  # by turn, by K (constraints checked at the turn)
        what = "turn" if name == "by_turn" else "number of constraints checked at the turn K"
        title = f"Held-out multi-turn strict accuracy by {what}, prompt / instruction level (95% CI):"
        lines += _by_model_table(title, "turn" if name == "by_turn" else "K", table, models)
    stage_seconds = ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["seconds"].items())
    lines += ["", f"Wall time per stage (seconds, summed over attempts): {stage_seconds}"]
    return "\n".join(lines) + "\n"


def write_report(
    store: StageStore,
    cfg: ExperimentConfig,
    stages: dict[str, Stage],
    evals: dict[str, Stage],
    selection: dict,
    multiturn_evals: dict[str, Stage],
) -> Path:
    """The report of every stage; `multiturn_evals` (model -> its held-out multi-turn evaluation) may be empty."""
    replicates, seed = cfg.report.bootstrap_replicates, cfg.report.seed
    suites = list(cfg.eval.suites)

    def build(folder: Path) -> dict:
        results = {
            "name": cfg.name,
            "config": dataclasses.asdict(cfg),
            "suites": {suite: suite_results(evals, suite, replicates, seed) for suite in suites},
            "heldout_by_k": by_constraint_count(evals, replicates, seed) if "heldout" in suites else {},
            "multiturn": multiturn_results(multiturn_evals, K_BUCKETS, replicates, seed) if multiturn_evals else {},
            "pairs": {
                recipe: {"pairs": s["split"], "pairs_by_g": s["pairs_by_g"]}
                for recipe, s in stages["pairs"].summary.items()
            },
            "instructions": stages["instructions"].summary,
            "sampling": stages["samples"].summary,
            "learning_rate_selection": selection,
            "train": {name: stage.summary for name, stage in stages.items() if name.startswith("train-")},
            "seconds": {stage.name: stage.seconds for stage in [*stages.values(), *evals.values(), *multiturn]},
            "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
            "eval_limit": cfg.eval.limit,
        }
        write_json_atomic(folder / "results.json", results)
        write_text_atomic(folder / "report.md", _markdown(results))
        if results["heldout_by_k"]:
            _plot(results["heldout_by_k"], folder / "accuracy_vs_k.png")
        return {"files": sorted(p.name for p in folder.iterdir())}

    multiturn = list(multiturn_evals.values())
    report = store.run("report", dataclasses.asdict(cfg.report), (*stages.values(), *evals.values(), *multiturn), build)
    out = store.root.parent
    for name in report.summary["files"]:
        if name != "stage.json":
            shutil.copyfile(report.file(name), out / name)
    return out
