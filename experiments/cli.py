"""`rpo-jax experiment --config configs/experiment/smollm2_rpo_vs_dpo.yaml --output-dir DIR [--stage NAME]`.

Runs the stages of `experiments.runner` that are not done yet (each is cached by the hash of its settings and
inputs, so a rerun or an interrupted run continues where it stopped); `--stage NAME` runs only the stages of that
name, whose inputs must already be done. Results: DIR/results.json, DIR/report.md, DIR/accuracy_vs_k.png,
DIR/items.jsonl.gz (every prompt's verdicts per model, training seed and suite). A config
stating `design: mechanism` (its fields: `experiments.mechanism_config`; the preset:
`configs/experiment/mechanism_cpu.yaml`) runs the mechanism experiment instead (`experiments.mechanism_runner`):
DIR/results.json, DIR/report.md, DIR/mechanism.png, DIR/items.jsonl.gz.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.files import local_path_arg
from experiments.mechanism_config import DESIGN
from experiments.runner import STAGES
from rpo_jax.config.loading import add_config_arguments, read_yaml

MECHANISM_STAGES = ("heldout", "data", "init", "train", "score", "report")  # experiments.mechanism_runner.STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "experiment YAML (configs/experiment/)")
    parser.add_argument("--output-dir", required=True, type=local_path_arg, help="where stages and results go")
    parser.add_argument(
        "--stage",
        choices=sorted(set(STAGES) | set(MECHANISM_STAGES)),
        default=None,
        help="run only this stage (default: every stage not done yet); the mechanism experiment has its own",
    )


def run(args: argparse.Namespace) -> int:
    from experiments.config import ExperimentConfig
    from experiments.runner import run_experiment
    from experiments.stages import StageStopped
    from rpo_jax.config.loading import load_config
    from rpo_jax.runtime.preemption import TrainingInterrupted

    try:
        if read_yaml(Path(args.config)).get("design") == DESIGN:
            from experiments.mechanism_config import MechanismConfig
            from experiments.mechanism_runner import run_mechanism

            out = run_mechanism(load_config(args.config, args.overrides, MechanismConfig), args.output_dir, args.stage)
        else:
            out = run_experiment(
                load_config(args.config, args.overrides, ExperimentConfig), args.output_dir, args.stage
            )
    except (StageStopped, TrainingInterrupted) as stop:  # a signal, after a checkpoint: no results yet
        print(f"rpo-jax experiment: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"experiment: results in {out / 'results.json'}, {out / 'report.md'}")
    return 0
