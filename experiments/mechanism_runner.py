"""`rpo-jax experiment --config <a config with design: mechanism>`: the mechanism experiment, as cached stages.

    heldout -> data-noise<i> -> init-seed<s> -> train-<arm>-noise<i>-seed<s>-lr<j> -> score-... -> report

`heldout` builds the validation and test sets (`mechanism_data`) and tokenizes them; `data-noise<i>` builds every
arm's training pairs at noise rate i; `init-seed<s>` writes the random initial model of seed s as an HF folder (the
start and the reference of every run of that seed); each arm is trained at every learning rate at the first noise
rate and seed, scored on the validation set, and the rate with the best validation mirror-unit accuracy is used for
every other run of that arm (with one candidate rate, nothing is scored on the validation set); every kept run is
scored on the test set (`mechanism_scoring`); `report` writes results with intervals over seeds and instructions
(`mechanism_report`). Stages are cached by content hash (`experiments.stages`), so a rerun or an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_pipeline.errors import UserError
from experiments.mechanism_config import ARMS, MechanismConfig
from experiments.mechanism_data import build_heldout, build_training
from experiments.mechanism_report import write_mechanism_report
from experiments.mechanism_scoring import score_run, tokenize_heldout
from experiments.stages import Stage, StageStopped, StageStore
from rpo_jax.config.loading import config_to_dict, load_config

STAGES = ("heldout", "data", "init", "train", "score", "report")
SPLITS = ("validation", "test")


def base_config(cfg: MechanismConfig, extra: list[str] | tuple[str, ...] = ()):
    """The run config with the overrides every arm shares: the initial model and the held-out tokenization must be
    those of the runs (an arm's own overrides come in `extra`)."""
    return load_config(cfg.train.run_config, [f"train.steps={cfg.train.steps}", *cfg.train.overrides, *extra])


def heldout_stage(store: StageStore, cfg: MechanismConfig) -> Stage:
    run = base_config(cfg)
    data = dataclasses.asdict(cfg.data) | {"noise_rates": None}  # held-out sets do not depend on the noise

    def build(folder: Path) -> dict:
        summary = build_heldout(cfg.data, folder)
        return summary | tokenize_heldout(folder, SPLITS, run.data.tokenizer_path, run.data.max_length)

    return store.run("heldout", {"data": data, "tokenizer": run.data.tokenizer_path}, (), build)


def data_stage(store: StageStore, cfg: MechanismConfig, index: int) -> Stage:
    rate = cfg.data.noise_rates[index]
    settings = dataclasses.asdict(cfg.data) | {"noise_rates": None, "noise_rate": rate}
    return store.run(f"data-noise{index}", settings, (), lambda folder: build_training(cfg.data, rate, folder))


def init_stage(store: StageStore, cfg: MechanismConfig, seed: int) -> Stage:
    run = base_config(cfg, [f"train.seed={seed}"])

    def build(folder: Path) -> dict:
        from rpo_jax.io.hf_export import export_hf
        from rpo_jax.runtime.sharding import make_mesh
        from rpo_jax.train.policy import build_policy

        policy = build_policy(run, make_mesh(run.mesh))
        export_hf(policy.trainable, run.model, run.lora, folder / "hf", tokenizer_dir=run.data.tokenizer_path)
        return {"hf_dir": "hf", "seed": seed}

    settings = {"model": config_to_dict(run.model), "seed": seed, "tokenizer": run.data.tokenizer_path}
    return store.run(f"init-seed{seed}", settings, (), build)


def run_config(cfg: MechanismConfig, arm: str, rate: float, seed: int, data: Stage, init: Stage, out: Path):
    pairs, loss = ARMS[arm]
    return base_config(
        cfg,
        [
            *cfg.train.overrides_for(arm),
            f"optim.learning_rate={rate}",
            f"loss.loss_type=[{loss}]",
            "loss.loss_weights=[1.0]",
            f"data.pairs_path={data.file(pairs) / 'pairs.jsonl'}",
            "data.eval_pairs_path=",
            "data.eval_path=",
            "train.eval_every=0",
            f"data.group_mirrors={str(arm.startswith('rpo')).lower()}",
            f"train.seed={seed}",
            f"data.shuffle_seed={seed}",
            f"train.init_checkpoint={init.file('hf')}",
            f"train.output_dir={out}",
        ],
    )


def train_stage(cfg, store, arm: str, noise: int, seed: int, lr_index: int, data: Stage, init: Stage) -> Stage:
    rate = cfg.train.learning_rates[lr_index]
    settings = {"arm": arm, "run": config_to_dict(run_config(cfg, arm, rate, seed, data, init, Path("<stage>/run")))}
    name = f"train-{arm}-noise{noise}-seed{seed}-lr{lr_index}"

    def build(folder: Path) -> dict:
        from rpo_jax.train.resume import ResumeRequest
        from rpo_jax.train.trainer import train

        if train(run_config(cfg, arm, rate, seed, data, init, folder / "run"), resume=ResumeRequest()) is None:
            raise StageStopped(f"{name}: stopped before its last step; the same command continues it")
        return {"hf_dir": "run/hf", "arm": arm, "learning_rate": rate, "seed": seed, "noise_index": noise}

    return store.run(name, settings, (data, init), build)


def score_stage(cfg, store, split: str, trained: Stage, init: Stage, heldout: Stage) -> Stage:
    run = base_config(cfg)

    def build(folder: Path) -> dict:
        return score_run(run, trained.file("run/hf"), init.file("hf"), heldout.path, split, folder)

    return store.run(
        f"score-{split}-{trained.name.removeprefix('train-')}", {"split": split}, (trained, init, heldout), build
    )


def run_mechanism(cfg: MechanismConfig, output_dir: str | Path, only: str | None = None) -> Path:
    """Runs (or reuses) every stage; with `only`, just the stages of that name (their inputs must be done)."""
    if only is not None and only not in STAGES:
        raise UserError(f"--stage {only!r}: must be one of {', '.join(STAGES)} for a mechanism experiment")
    out = Path(output_dir)
    store = StageStore(out / "stages", only=only)
    heldout = heldout_stage(store, cfg)
    data = [data_stage(store, cfg, i) for i in range(len(cfg.data.noise_rates))]
    inits = {seed: init_stage(store, cfg, seed) for seed in cfg.train.seeds}
    if only in ("heldout", "data", "init"):
        return out
    first_seed, chosen, selection, scores = cfg.train.seeds[0], {}, {}, {}
    for arm in cfg.train.arms:
        chosen[arm] = 0
        if len(cfg.train.learning_rates) == 1:
            continue
        candidates = {}  # learning-rate index -> validation score of the arm's run at the first noise rate and seed
        for j in range(len(cfg.train.learning_rates)):
            trained = train_stage(cfg, store, arm, 0, first_seed, j, data[0], inits[first_seed])
            candidates[j] = score_stage(cfg, store, "validation", trained, inits[first_seed], heldout)
        chosen[arm] = max(candidates, key=lambda j: (candidates[j].summary["mirror"]["accuracy"], -j))
        selection[arm] = {cfg.train.learning_rates[j]: s.summary for j, s in candidates.items()}
    for arm, j in chosen.items():
        for noise in range(len(cfg.data.noise_rates)):
            for seed in cfg.train.seeds:
                trained = train_stage(cfg, store, arm, noise, seed, j, data[noise], inits[seed])
                if only != "train":
                    scores[(arm, noise, seed)] = score_stage(cfg, store, "test", trained, inits[seed], heldout)
    if only in ("train", "score"):
        return out
    return write_mechanism_report(store, cfg, heldout, data, scores, selection)
