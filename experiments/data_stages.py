"""The experiment's data stages: the base model, the instructions (training, held-out and validation), the
self-samples and the pairs every method trains on (see `experiments.runner`)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.files import file_sha256, write_jsonl_atomic
from data_pipeline.pairs.build import BuildSettings, build_pairs
from data_pipeline.pairs.synthesis import ifeval_row, synthesize, write_instructions
from experiments.config import ExperimentConfig, InstructionsSection
from experiments.stages import Stage, StageStore

# The pair sets of the `pairs` stage (built whichever methods are listed; its key predates `dpo_same_pairs`, which
# its own stage, `pairs-same`, builds from the same samples so that adding it leaves every earlier stage cached).
RECIPES = ("dpo", "iopo", "rpo")
SAME_PAIRS = "dpo_same_pairs"


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


def write_validation(settings: InstructionsSection, folder: Path) -> dict:
    """`validation_ifeval.jsonl`: `num_validation` instructions drawn like the held-out ones, after them (the same
    random stream with more held-out instructions: the training and held-out rows stay what they are without)."""
    base = settings.synthesis()
    _, drawn, _ = synthesize(dataclasses.replace(base, num_heldout=base.num_heldout + settings.num_validation))
    heldout, validation = drawn[: base.num_heldout], drawn[base.num_heldout :]
    written = folder / "heldout_ifeval.jsonl"
    if [json.dumps(ifeval_row(r)) for r in heldout] != [json.dumps(json.loads(x)) for x in written.open()]:
        raise RuntimeError("the validation draw changed the held-out instructions")  # synthesize's order changed
    rows = [ifeval_row(r) | {"key": f"validation-{i:05d}"} for i, r in enumerate(validation)]
    write_jsonl_atomic(folder / "validation_ifeval.jsonl", rows)
    prompts = {r["prompt"] for r in map(ifeval_row, heldout)}
    ks = [len(r["instruction_id_list"]) for r in rows]
    return {
        "instructions": len(rows),
        "constraints_per_instruction": {k: ks.count(k) for k in sorted(set(ks))},
        "same_prompt_as_a_heldout_one": sum(r["prompt"] in prompts for r in rows),
    }


def instructions_stage(store: StageStore, cfg: ExperimentConfig) -> Stage:
    def build(folder: Path) -> dict:
        stats = write_instructions(cfg.instructions.synthesis(), folder / "instructions", overwrite=True)
        if cfg.instructions.num_validation:
            stats["validation"] = write_validation(cfg.instructions, folder / "instructions")
        return stats

    # The conversation settings are always 1 turn and no system constraints here (ExperimentConfig refuses others),
    # and no validation split leaves its count out too: the stages of experiments made before them stay valid.
    settings = dataclasses.asdict(cfg.instructions)
    del settings["turns"], settings["system_constraints"]
    if not settings["num_validation"]:
        del settings["num_validation"]
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
    recipes = list(RECIPES)

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


def same_pairs_stage(store: StageStore, cfg: ExperimentConfig, instructions: Stage, samples: Stage) -> Stage:
    """`dpo_same_pairs`: the original instruction on every response pair RPO uses (Hamming distance >= RPO's
    min_g), more constraints met chosen, equal scores dropped (`build-pairs --recipe dpo --dpo-pairing all`)."""
    settings = {
        "recipe": "dpo",
        "dpo_pairing": "all",
        "min_g": cfg.pairs.min_g,
        "eval_fraction": cfg.pairs.eval_fraction,
        "seed": cfg.pairs.seed,
    }

    def build(folder: Path) -> dict:
        given = {
            "input": str(instructions.file("instructions/train_instructions.jsonl")),
            "responses": str(samples.file("samples.jsonl")),
        }
        output = str(folder / SAME_PAIRS)
        return {SAME_PAIRS: build_pairs(BuildSettings(**settings, **given, output=output, overwrite=True))}

    return store.run("pairs-same", settings, (instructions, samples), build)
