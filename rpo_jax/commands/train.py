"""`rpo-jax train --config PATH [--output-dir DIR] [--steps N] [--resume] [--set a.b=value ...]`."""

from __future__ import annotations

import argparse
import sys

from data_pipeline.files import local_path_arg
from rpo_jax.config_loading import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--output-dir", type=local_path_arg, help="overrides train.output_dir")
    parser.add_argument("--steps", type=int, help="overrides train.steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument(
        "--allow-config-change", action="store_true", help="resume even if the checkpoint's config differs"
    )
    parser.add_argument(
        "--allow-data-change", action="store_true", help="resume even if the dataset fingerprint differs"
    )


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config_loading import config_from_args
    from rpo_jax.preemption import TrainingInterrupted
    from rpo_jax.trainer import train

    overrides = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    overrides += [f"train.steps={args.steps}"] if args.steps is not None else []
    try:
        train(
            config_from_args(args, *overrides),
            resume=args.resume,
            allow_config_change=args.allow_config_change,
            allow_data_change=args.allow_data_change,
        )
    except TrainingInterrupted as stop:  # Ctrl-C: a checkpoint was saved
        print(f"rpo-jax train: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0
