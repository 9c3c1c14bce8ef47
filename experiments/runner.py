"""`rpo-jax experiment`: the RPO-vs-DPO experiment of the paper at a scale this machine runs, as cached stages.

    model -> instructions -> samples -> pairs (-> pairs-same) -> train-<method>-lr<i>[-seed<s>] -> select/eval
    -> report;  instructions-multiturn -> eval-multiturn-<model>[-seed<s>] -> report

`model` converts the base GGUF (or takes an HF folder); `instructions` synthesizes training, held-out and (with
`instructions.num_validation`) validation instructions; `samples` self-samples the base model on the training
instructions; `pairs` builds RPO pairs, the DPO baseline (best vs worst on the original instruction) and IOPO
quadruples from the same samples, `pairs-same` DPO pairs on exactly RPO's response pairs (`dpo_same_pairs`, when
listed); one model is trained per method, candidate learning rate and seed (`train.seeds`); with several candidate
rates, the rate with the best prompt-level accuracy on the validation instructions (never reported; without them,
on the held-out suite, and the report says so) is kept, chosen on the first seed and trained with every other
seed; every kept model and the base model are evaluated greedily on every suite, and on the held-out multi-turn
suite turn by turn (`experiments.multiturn`); `report` computes accuracies with bootstrap intervals over prompts
(and seeds) and paired differences (see `experiments.report`).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.errors import UserError
from experiments.config import METHODS, ExperimentConfig
from experiments.data_stages import (
    SAME_PAIRS,
    instructions_stage,
    model_dir,
    model_stage,
    pairs_stage,
    same_pairs_stage,
    samples_stage,
)
from experiments.evaluation import evaluate_model
from experiments.multiturn import evaluate_multiturn, multiturn_instructions_stage
from experiments.report import write_report
from experiments.stages import Stage, StageStopped, StageStore
from rpo_jax.config.loading import config_to_dict, load_config

STAGES = ("instructions", "model", "samples", "pairs", "train", "select", "eval", "report")
__all__ = ["STAGES", "instructions_stage", "pairs_stage", "run_config", "run_experiment", "train_stage"]


def seeded(name: str, seed: int | None) -> str:
    """A stage name of one seed; seed 0 (and the untrained base model, None) keeps the single-seed name."""
    return f"{name}-seed{seed}" if seed else name


def run_config(
    cfg: ExperimentConfig, method: str, learning_rate: float, model: Stage, pairs: Stage, out: Path, seed: int = 0
):
    """The training config of one method and seed: the shared run config, the experiment's overrides, then its
    data. The seed sets the initial LoRA weights and the data order (`train.seed`, `data.shuffle_seed`); 0 is the
    run configs' default, so a single-seed experiment's configs (and stage keys) are what they were before seeds."""
    recipe, loss = METHODS[method]
    held_out = pairs.summary[recipe]["split"]["eval"]
    # Pair metrics on the held-out pairs of the build; with too few instructions to hold any out, none.
    evaluation = (
        [f"data.eval_pairs_path={pairs.file(recipe) / 'eval_pairs.jsonl'}"]
        if held_out
        else ["data.eval_pairs_path=", "data.eval_path=", "train.eval_every=0"]
    )
    return load_config(
        cfg.model.run_config,
        [
            *cfg.train.overrides_for(method),
            f"train.seed={seed}",
            f"data.shuffle_seed={seed}",
            f"train.steps={cfg.train.steps}",
            f"optim.learning_rate={learning_rate}",
            f"loss.loss_type=[{loss}]",
            "loss.loss_weights=[1.0]",
            f"data.pairs_path={pairs.file(recipe) / 'pairs.jsonl'}",
            *evaluation,
            f"data.tokenizer_path={model_dir(model)}",
            f"train.init_checkpoint={model_dir(model)}",
            f"train.output_dir={out}",
        ],
    )


def train_stage(
    store: StageStore, cfg: ExperimentConfig, method: str, rate_index: int, model: Stage, pairs: Stage, seed: int = 0
) -> Stage:
    learning_rate = cfg.train.learning_rates[rate_index]
    name = seeded(f"train-{method}-lr{rate_index}", seed)
    # Settings as the trainer sees them (output folder aside), so any change to the run config retrains.
    settings = {
        "method": method,
        "run": config_to_dict(run_config(cfg, method, learning_rate, model, pairs, Path("<stage>/run"), seed)),
    }

    def build(folder: Path) -> dict:
        from rpo_jax.train.resume import ResumeRequest
        from rpo_jax.train.trainer import train

        # An interrupted earlier attempt (same settings: the stage key covers them) is continued; an empty
        # folder starts fresh.
        run = run_config(cfg, method, learning_rate, model, pairs, folder / "run", seed)
        exported = train(run, resume=ResumeRequest())
        if exported is None:  # a SIGTERM stopped it after a checkpoint: finishing the stage would cache that
            raise StageStopped(
                f"{name}: stopped before step {cfg.train.steps}; the stage stays unfinished "
                f"in {folder} and the same command continues it from its checkpoint"
            )
        return {"hf_dir": "run/hf", "method": method, "learning_rate": learning_rate} | ({"seed": seed} if seed else {})

    return store.run(name, settings, (model, pairs), build)


def select_rate(
    store: StageStore, cfg: ExperimentConfig, method: str, model: Stage, instructions: Stage, pairs: Stage
) -> tuple[list[Stage], dict]:
    """The trained models of `method`, one per seed, and how the rate was chosen: with several rates, the first
    seed's model whose prompt-level accuracy on `cfg.selection_suite` is best (the first on ties), then the other
    seeds at that rate."""
    first, *others = cfg.train.seeds
    rates = range(len(cfg.train.learning_rates))
    candidates = [train_stage(store, cfg, method, i, model, pairs, first) for i in rates]
    best, selection = 0, {}
    if len(candidates) > 1:
        suite, scores = cfg.selection_suite, {}
        for stage in candidates:
            chosen_on = evaluate_model(
                store, cfg, seeded(f"select-{method}", first), stage, (suite,), instructions, model_dir(model)
            )
            scores[stage.summary["learning_rate"]] = chosen_on.summary[suite]["prompt_level_strict_acc"]
        best = max(rates, key=lambda i: (scores[cfg.train.learning_rates[i]], -i))
        selection = {
            "suite": suite,
            "reported_suite": suite in cfg.eval.suites,
            "seed": first,
            "scores": scores,
            "chosen": cfg.train.learning_rates[best],
        }
    return [candidates[best], *(train_stage(store, cfg, method, best, model, pairs, s) for s in others)], selection


def run_experiment(cfg: ExperimentConfig, output_dir: str | Path, only: str | None = None) -> Path:
    """Runs (or reuses) every stage; with `only`, just the stages of that name (their inputs must be done), and
    nothing after them. Returns the output folder (results.json, report.md, accuracy_vs_k.png, items.jsonl.gz)."""
    if only is not None and only not in STAGES:
        raise UserError(f"--stage {only!r}: must be one of {', '.join(STAGES)}")
    out = Path(output_dir)
    store = StageStore(out / "stages", only=only)
    instructions = instructions_stage(store, cfg)
    conversations = multiturn_instructions_stage(store, cfg)
    if only == "instructions":
        return out
    model = model_stage(store, cfg)
    if only == "model":
        return out
    samples = samples_stage(store, cfg, model, instructions)
    if only == "samples":
        return out
    pairs = pairs_stage(store, cfg, instructions, samples)
    same = same_pairs_stage(store, cfg, instructions, samples) if SAME_PAIRS in cfg.train.methods else None
    if only == "pairs":
        return out
    kept, selection = {}, {}
    for method in cfg.train.methods:
        data = same if METHODS[method][0] == SAME_PAIRS else pairs
        kept[method], selection[method] = select_rate(store, cfg, method, model, instructions, data)
    if only in ("train", "select"):
        return out
    seeds = {"base": [None], **{method: cfg.train.seeds for method in kept}}
    models = {"base": [model], **kept}  # name -> one model per seed (the base model: one)

    def each(evaluate, prefix: str, *inputs) -> dict[str, list[Stage]]:
        return {
            name: [
                evaluate(store, cfg, seeded(f"{prefix}-{name}", s), stage, *inputs, model_dir(model))
                for s, stage in zip(seeds[name], runs, strict=True)
            ]
            for name, runs in models.items()
        }

    evals = each(evaluate_model, "eval", cfg.eval.suites, instructions)
    multiturn = each(evaluate_multiturn, "eval-multiturn", conversations) if conversations is not None else {}
    if only == "eval":
        return out
    stages = {"model": model, "instructions": instructions, "samples": samples, "pairs": pairs}
    if same is not None:
        stages["pairs-same"] = same
    for method, runs in kept.items():
        stages |= {seeded(f"train-{method}", s): stage for s, stage in zip(cfg.train.seeds, runs, strict=True)}
    if conversations is not None:
        stages["instructions-multiturn"] = conversations
    return write_report(store, cfg, stages, evals, selection, multiturn)
