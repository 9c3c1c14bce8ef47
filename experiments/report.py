"""The experiment's report: accuracies with bootstrap intervals, paired differences, accuracy vs number of
constraints, pair statistics, how learning rates were chosen, cost per stage. Written as `results.json`,
`report.md`, `accuracy_vs_k.png` and `items.jsonl.gz` (every prompt's verdicts per model, seed and suite, so every
interval can be recomputed) in the output folder (the `report` stage keeps a copy).

With one training seed, intervals are over prompts (`stats.accuracy_interval`, `stats.paired_difference`); with
several (`train.seeds`), over seeds and prompts (a two-level bootstrap: `stats.seed_prompt_interval`,
`stats.seed_prompt_difference`), and every model and difference also has its per-seed results."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
import shutil
from pathlib import Path

from data_pipeline.files import write_json_atomic, write_text_atomic
from experiments.config import ExperimentConfig
from experiments.evaluation import read_verdicts, verdict_arrays
from experiments.multiturn import SUITE as MULTITURN
from experiments.multiturn import multiturn_results
from experiments.stages import Stage, StageStore
from experiments.stats import runs_difference, runs_interval
from rpo_jax.train.run_log import save_figure

COMPARISONS = (
    ("rpo", "dpo"),
    ("rpo", "dpo_same_pairs"),
    ("dpo", "base"),
    ("dpo_same_pairs", "base"),
    ("rpo", "base"),
    ("iopo", "base"),
    ("rpo", "iopo"),
)
K_BUCKETS = ((1, 2), (3, 4), (5, 6), (7, 8))
PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "numpy")


def suite_results(evals: dict[str, list[Stage]], seeds: tuple[int, ...], suite: str, replicates: int, seed: int):
    """Every model's accuracy on `suite` and the paired differences of `COMPARISONS`; `evals`: model -> its
    evaluations, one per seed (the base model: one)."""
    arrays = {name: verdict_arrays([read_verdicts(stage, suite) for stage in runs]) for name, runs in evals.items()}
    if len({tuple(counts) for _, counts in arrays.values()}) != 1:
        raise RuntimeError(f"{suite}: the models were scored on different prompts; paired comparison impossible")
    out = {"models": {}, "differences": {}}
    for name, (passed, counts) in arrays.items():
        intervals = runs_interval(passed, counts, replicates=replicates, seed=seed)
        if len(evals[name]) == 1:
            out["models"][name] = evals[name][0].summary[suite] | {"intervals": intervals}
            continue
        per_seed = {
            str(s): stage.summary[suite] | {"intervals": runs_interval(row, counts, replicates=replicates, seed=seed)}
            for s, stage, row in zip(seeds, evals[name], passed, strict=True)
        }
        out["models"][name] = {"intervals": intervals, "num_prompts": len(counts), "per_seed": per_seed}
    for better, worse in COMPARISONS:
        if better in arrays and worse in arrays:
            (a, counts), (b, _) = arrays[worse], arrays[better]
            d = runs_difference(a, b, counts, replicates=replicates, seed=seed)
            if "per_seed" in d:
                d["per_seed"] = dict(zip(map(str, seeds), d["per_seed"], strict=True))
            out["differences"][f"{better}-{worse}"] = d
    return out


def by_constraint_count(evals: dict[str, list[Stage]], replicates: int, seed: int) -> dict:
    """Held-out strict accuracy per bucket of K (the paper's accuracy-vs-constraints curve), prompt and instruction
    level (a small model follows all of 5-8 constraints almost never, so the prompt-level curve sits at 0 there
    while the instruction-level one still moves), over prompts (and seeds). A bucket no held-out instruction falls
    in is empty."""
    out = {}
    for low, high in K_BUCKETS:
        bucket = {}
        for name, runs in evals.items():
            rows = [[v for v in read_verdicts(stage, "heldout") if low <= len(v["strict"]) <= high] for stage in runs]
            if rows[0]:
                passed, counts = verdict_arrays(rows)
                bucket[name] = runs_interval(passed, counts, replicates=replicates, seed=seed)
                bucket[name] |= {"num_prompts": len(counts)}
        out[f"{low}-{high}"] = bucket
    return out


def write_items(path: Path, runs: dict[tuple[str, int | None, str], Stage]) -> int:
    """Every prompt's verdicts (model, seed, suite, key, instruction ids, strict, loose; multi-turn rows also their
    turn), gzip-compressed with a fixed timestamp; returns the rows."""
    rows = 0
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as out:
        for (model, seed, suite), stage in runs.items():
            for verdict in read_verdicts(stage, suite):
                out.write((json.dumps({"model": model, "seed": seed, "suite": suite} | verdict) + "\n").encode())
                rows += 1
    return rows


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


def _selection_lines(selection: dict) -> list[str]:
    """How each method's learning rate was chosen; a choice made on a reported suite is said to be one."""
    lines = []
    for method, chosen in selection.items():
        if chosen:
            scores = ", ".join(f"{rate:g}: {acc:.3f}" for rate, acc in chosen["scores"].items())
            where = chosen["suite"] + (
                " (a REPORTED suite: its results for this method are optimistic)"
                if chosen["reported_suite"]
                else " (not reported)"
            )
            lines.append(f"- {method}: {chosen['chosen']:g}, chosen on {where}, seed {chosen['seed']} ({scores})")
    return ["", "Learning rates (prompt-level strict accuracy of each candidate):", "", *lines] if lines else []


def _per_seed_lines(results: dict, first: dict) -> list[str]:
    """Each seed's prompt-level accuracy of every trained model and each seed's paired differences."""

    def accuracy(suite: dict, name: str) -> str:
        per_seed = suite["models"][name]["per_seed"]
        return ", ".join(f"s{s} {r['intervals']['prompt']['accuracy']:.3f}" for s, r in per_seed.items())

    def difference(suite: dict, name: str) -> str:
        per_seed = suite["differences"][name]["per_seed"]
        return ", ".join(f"s{s} {d['prompt']['delta']:+.3f}" for s, d in per_seed.items())

    trained = [name for name, model in first["models"].items() if "per_seed" in model]
    lines = _suite_table(results, "Per seed, prompt-level strict accuracy:", trained, accuracy)
    return lines + _suite_table(
        results, "Per seed, paired differences (prompt level):", first["differences"], difference
    )


def _markdown(results: dict) -> str:
    first = next(iter(results["suites"].values()))
    over = "seeds and prompts" if len(results["seeds"]) > 1 else "prompts"

    def accuracy(suite: dict, name: str) -> str:
        return _interval(suite["models"][name]["intervals"]["prompt"], 3)

    def difference(suite: dict, name: str) -> str:
        d = suite["differences"][name]["prompt"]
        return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    lines = [f"# {results['name']}", "", f"Training seeds: {', '.join(map(str, results['seeds']))}."]
    lines += _suite_table(
        results, f"Prompt-level strict accuracy (95% bootstrap CI over {over}):", first["models"], accuracy
    )
    lines += _suite_table(
        results, f"Paired differences, prompt-level strict (95% CI over {over}):", first["differences"], difference
    )
    if len(results["seeds"]) > 1:
        lines += _per_seed_lines(results, first)
    lines += _selection_lines(results["learning_rate_selection"])
    models = list(first["models"])
    if results["heldout_by_k"]:
        title = f"Held-out strict accuracy by number of constraints K, prompt / instruction level (95% CI, {over}):"
        lines += _by_model_table(title, "K", results["heldout_by_k"], models)
    for name, table in results.get("multiturn", {}).items():  # by turn, by K (constraints checked at the turn)
        what = "turn" if name == "by_turn" else "number of constraints checked at the turn K"
        title = f"Held-out multi-turn strict accuracy by {what}, prompt / instruction level (95% CI, {over}):"
        lines += _by_model_table(title, "turn" if name == "by_turn" else "K", table, models)
    stage_seconds = ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["seconds"].items())
    lines += ["", f"Wall time per stage (seconds, summed over attempts): {stage_seconds}"]
    return "\n".join(lines) + "\n"


def write_report(
    store: StageStore,
    cfg: ExperimentConfig,
    stages: dict[str, Stage],
    evals: dict[str, list[Stage]],
    selection: dict,
    multiturn_evals: dict[str, list[Stage]],
) -> Path:
    """The report of every stage. `evals` and `multiturn_evals` (which may be empty): model -> its evaluations, one
    per training seed (the base model: one)."""
    replicates, seed = cfg.report.bootstrap_replicates, cfg.report.seed
    suites, seeds = list(cfg.eval.suites), cfg.train.seeds
    pair_sets = {name: s for key in ("pairs", "pairs-same") if key in stages for name, s in stages[key].summary.items()}
    evaluations = [stage for runs in (*evals.values(), *multiturn_evals.values()) for stage in runs]
    items = {
        (name, None if name == "base" else s, suite): stage
        for table, names in ((evals, suites), (multiturn_evals, [MULTITURN]))
        for name, runs in table.items()
        for s, stage in zip(seeds, runs)  # the base model's one run pairs with the first seed
        for suite in names
    }

    def build(folder: Path) -> dict:
        results = {
            "name": cfg.name,
            "config": dataclasses.asdict(cfg),
            "seeds": list(seeds),
            "suites": {suite: suite_results(evals, seeds, suite, replicates, seed) for suite in suites},
            "heldout_by_k": by_constraint_count(evals, replicates, seed) if "heldout" in suites else {},
            "multiturn": multiturn_results(multiturn_evals, K_BUCKETS, replicates, seed) if multiturn_evals else {},
            "pairs": {name: {"pairs": s["split"], "pairs_by_g": s["pairs_by_g"]} for name, s in pair_sets.items()},
            "instructions": stages["instructions"].summary,
            "sampling": stages["samples"].summary,
            "learning_rate_selection": selection,
            "train": {name: stage.summary for name, stage in stages.items() if name.startswith("train-")},
            "seconds": {stage.name: stage.seconds for stage in [*stages.values(), *evaluations]},
            "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
            "eval_limit": cfg.eval.limit,
        }
        results["items"] = {"file": "items.jsonl.gz", "rows": write_items(folder / "items.jsonl.gz", items)}
        write_json_atomic(folder / "results.json", results)
        write_text_atomic(folder / "report.md", _markdown(results))
        if results["heldout_by_k"]:
            _plot(results["heldout_by_k"], folder / "accuracy_vs_k.png")
        return {"files": sorted(p.name for p in folder.iterdir())}

    report = store.run("report", dataclasses.asdict(cfg.report), (*stages.values(), *evaluations), build)
    out = store.root.parent
    for name in report.summary["files"]:
        if name != "stage.json":
            shutil.copyfile(report.file(name), out / name)
    return out
