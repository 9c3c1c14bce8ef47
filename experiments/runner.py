"""`rpo-jax experiment`: the RPO-vs-DPO experiment of the paper at a scale this machine runs, as cached stages.

    model -> instructions -> samples -> pairs -> train-<method>-lr<i> -> select/eval -> report
    instructions-multiturn -> eval-multiturn-<model> -> report

`model` converts the base GGUF (or takes an HF folder); `instructions` synthesizes training and held-out
instructions; `samples` self-samples the base model on the training instructions; `pairs` builds RPO pairs, the
DPO baseline (best vs worst on the original instruction) and IOPO quadruples from the same samples; one model is
trained per method and candidate learning rate; with several candidates, the rate with the best held-out
prompt-level accuracy is kept (chosen on held-out synthesized instructions, never on IFEval/IFBench); every kept
model and the base model are evaluated greedily on every suite, and on the held-out multi-turn suite turn by turn
(`experiments.multiturn`); `report` computes accuracies with bootstrap intervals and paired differences (see
`experiments.report`).
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.files import file_sha256
from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.synthesis import write_instructions
from experiments.config import METHODS, ExperimentConfig
from experiments.evaluation import evaluate_model
from experiments.multiturn import evaluate_multiturn, multiturn_instructions_stage
from experiments.report import write_report
from experiments.stages import Stage, StageStopped, StageStore
from rpo_jax.config.loading import config_to_dict, load_config

STAGES = ("instructions", "model", "samples", "pairs", "train", "select", "eval", "report")


def model_dir(model: Stage) -> Path:
    """The base model's HF folder (a stage-relative `hf` for a converted GGUF, else the configured folder)."""
    return model.file(model.summary["hf_dir"])


def model_stage(store: StageStore, cfg: ExperimentConfig) -> Stage:
    if cfg.model.hf_dir:
        hf = Path(cfg.model.hf_dir).absolute()
        weights = sorted(hf.glob("*.safetensors"))
        if not (hf / "config.json").is_file() or not weights:
            raise UserError(f"model.hf_dir={cfg.model.hf_dir}: not an HF folder with config.json and safetensors")
        settings = {"hf_dir": str(hf), "sha256": {p.name: file_sha256(p) for p in [hf / "config.json", *weights]}}
        return store.run("model", settings, (), lambda folder: {"hf_dir": str(hf)})
    gguf = Path(cfg.model.gguf)
    if not gguf.is_file():
        raise UserError(f"model.gguf={cfg.model.gguf}: file not found (scripts/fetch_smollm2.py fetches SmolLM2)")

    def convert(folder: Path) -> dict:
        from rpo_jax.io.gguf import gguf_to_hf

        shutil.rmtree(folder / "hf", ignore_errors=True)  # a half-written folder of an interrupted attempt
        gguf_to_hf(gguf, folder / "hf")
        return {"hf_dir": "hf", "gguf": str(gguf)}

    return store.run("model", {"gguf_sha256": file_sha256(gguf)}, (), convert)


def instructions_stage(store: StageStore, cfg: ExperimentConfig) -> Stage:
    def build(folder: Path) -> dict:
        return write_instructions(cfg.instructions, folder / "instructions", overwrite=True)

    # The conversation settings are always 1 turn and no system constraints here (ExperimentConfig refuses others);
    # left out of the key, so the stages of experiments made before they existed stay valid.
    settings = dataclasses.asdict(cfg.instructions)
    del settings["turns"], settings["system_constraints"]
    return store.run("instructions", settings, (), build)


def samples_stage(store: StageStore, cfg: ExperimentConfig, model: Stage, instructions: Stage) -> Stage:
    from rpo_jax.generate.generation import GenerationSettings, generate_responses

    s = cfg.sampling
    settings = GenerationSettings(
        num_samples=s.num_samples,
        temperature=s.temperature,
        top_p=s.top_p,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed,
        batch_size=s.batch_size,
    )

    def build(folder: Path) -> dict:
        if s.responses_file:
            return {
                "responses": copy_responses(Path(s.responses_file), folder / "samples.jsonl"),
                "responses_file": s.responses_file,
            }
        prompts = instructions.file("instructions/train_prompts.jsonl")
        hf = model_dir(model)
        return generate_responses(str(hf), hf, prompts, folder / "samples.jsonl", settings)

    given = {"responses_sha256": file_sha256(s.responses_file)} if s.responses_file else {}
    return store.run("samples", dataclasses.asdict(s) | given, (model, instructions), build)


def copy_responses(source: Path, target: Path) -> int:
    """Earlier samples (JSONL, gzip-compressed when named .gz) as the stage's samples.jsonl; returns the rows."""
    if not source.is_file():
        raise UserError(f"sampling.responses_file={source}: file not found")
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as src:
        text = src.read()
    target.write_text(text, encoding="utf-8")
    return sum(1 for line in text.splitlines() if line.strip())


def pairs_stage(store: StageStore, cfg: ExperimentConfig, instructions: Stage, samples: Stage) -> Stage:
    # Every recipe, whichever methods are listed: building pairs takes seconds, and a pairs stage keyed on the
    # method list would retrain every model when a method is added or left out of one run.
    recipes = sorted({recipe for recipe, _ in METHODS.values()})

    def build(folder: Path) -> dict:
        summary = {}
        for recipe in recipes:
            dpo = recipe == "dpo"
            summary[recipe] = build_pairs(
                BuildSettings(
                    recipe=recipe,
                    input=str(instructions.file("instructions/train_instructions.jsonl")),
                    responses=str(samples.file("samples.jsonl")),
                    output=str(folder / recipe),
                    overwrite=True,
                    min_g=cfg.pairs.dpo_min_g if dpo else cfg.pairs.min_g,
                    dpo_pairing="best_worst" if dpo else "all",
                    eval_fraction=cfg.pairs.eval_fraction,
                    seed=cfg.pairs.seed,
                )
            )
        return summary

    return store.run("pairs", dataclasses.asdict(cfg.pairs) | {"recipes": recipes}, (instructions, samples), build)


def run_config(cfg: ExperimentConfig, method: str, learning_rate: float, model: Stage, pairs: Stage, out: Path):
    """The training config of one method: the shared run config, the experiment's overrides, then its data."""
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
    store: StageStore, cfg: ExperimentConfig, method: str, rate_index: int, model: Stage, pairs: Stage
) -> Stage:
    learning_rate = cfg.train.learning_rates[rate_index]
    # Settings as the trainer sees them (output folder aside), so any change to the run config retrains.
    settings = {
        "method": method,
        "run": config_to_dict(run_config(cfg, method, learning_rate, model, pairs, Path("<stage>/run"))),
    }

    def build(folder: Path) -> dict:
        from rpo_jax.train.resume import ResumeRequest
        from rpo_jax.train.trainer import train

        # An interrupted earlier attempt (same settings: the stage key covers them) is continued; an empty
        # folder starts fresh.
        exported = train(run_config(cfg, method, learning_rate, model, pairs, folder / "run"), resume=ResumeRequest())
        if exported is None:  # a SIGTERM stopped it after a checkpoint: finishing the stage would cache that
            raise StageStopped(
                f"train-{method}-lr{rate_index}: stopped before step {cfg.train.steps}; the stage stays unfinished "
                f"in {folder} and the same command continues it from its checkpoint"
            )
        return {"hf_dir": "run/hf", "method": method, "learning_rate": learning_rate}

    return store.run(f"train-{method}-lr{rate_index}", settings, (model, pairs), build)


def select_rate(
    store: StageStore, cfg: ExperimentConfig, method: str, model: Stage, instructions: Stage, pairs: Stage
) -> tuple[Stage, dict]:
    """The trained model of `method` whose held-out prompt-level accuracy is best (the first on ties), and the
    held-out accuracy of every candidate."""
    candidates = [train_stage(store, cfg, method, i, model, pairs) for i in range(len(cfg.train.learning_rates))]
    if len(candidates) == 1:
        return candidates[0], {}
    scores = {}
    for stage in candidates:
        heldout = evaluate_model(store, cfg, f"select-{method}", stage, ("heldout",), instructions, model_dir(model))
        scores[stage.summary["learning_rate"]] = heldout.summary["heldout"]["prompt_level_strict_acc"]
    best = max(range(len(candidates)), key=lambda i: (scores[candidates[i].summary["learning_rate"]], -i))
    return candidates[best], scores


def run_experiment(cfg: ExperimentConfig, output_dir: str | Path, only: str | None = None) -> Path:
    """Runs (or reuses) every stage; with `only`, just the stages of that name (their inputs must be done), and
    nothing after them. Returns the output folder (results.json, report.md, accuracy_vs_k.png)."""
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
    if only == "pairs":
        return out
    kept, selection = {}, {}
    for method in cfg.train.methods:
        kept[method], selection[method] = select_rate(store, cfg, method, model, instructions, pairs)
    if only in ("train", "select"):
        return out
    evals = {
        name: evaluate_model(store, cfg, f"eval-{name}", stage, cfg.eval.suites, instructions, model_dir(model))
        for name, stage in {"base": model, **kept}.items()
    }
    multiturn = {
        name: evaluate_multiturn(store, cfg, f"eval-multiturn-{name}", stage, conversations, model_dir(model))
        for name, stage in ({"base": model, **kept}.items() if conversations is not None else ())
    }
    if only == "eval":
        return out
    stages = {
        "model": model,
        "instructions": instructions,
        "samples": samples,
        "pairs": pairs,
        **{f"train-{m}": s for m, s in kept.items()},
    }
    if conversations is not None:
        stages["instructions-multiturn"] = conversations
    return write_report(store, cfg, stages, evals, selection, multiturn)
