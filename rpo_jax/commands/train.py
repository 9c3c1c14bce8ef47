"""`rpo-jax train --config PATH [--output-dir DIR] [--steps N] [--resume [STEP] | --overwrite] [--set a.b=v ...]`."""

from __future__ import annotations

import argparse
import sys

from data_pipeline.errors import UserError
from data_pipeline.storage import storage_path_arg
from rpo_jax.config.loading import add_config_arguments


def resume_step(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step number (a positive integer)")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--output-dir",
        type=storage_path_arg,
        help="overrides train.output_dir: a folder, relative to the current directory, or gs://BUCKET/PATH "
        "(default: the config's)",
    )
    parser.add_argument("--steps", type=int, help="overrides train.steps (default: the config's)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        type=lambda text: text if text == "latest" else resume_step(text),
        metavar="STEP",
        help="continue the run in train.output_dir from its newest checkpoint that reads back (an unreadable "
        "newer one is named and set aside), or from checkpoint STEP; with no checkpoint, start fresh "
        "(default: no resume, and a folder holding a run is refused)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of a previous run in train.output_dir (its tokenized data is kept as a cache)",
    )
    parser.add_argument(
        "--allow-config-change", action="store_true", help="resume even if the checkpoint's config differs"
    )
    parser.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume even if the fingerprint of the data (or initial weights) differs",
    )


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config.loading import config_from_args
    from rpo_jax.runtime.preemption import TrainingInterrupted
    from rpo_jax.train.resume import ResumeRequest
    from rpo_jax.train.trainer import train

    overrides = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    overrides += [f"train.steps={args.steps}"] if args.steps is not None else []
    resume = None
    if args.resume is None and (args.allow_config_change or args.allow_data_change):
        raise UserError("--allow-config-change / --allow-data-change only apply with --resume")
    if args.resume is not None:
        step = None if args.resume == "latest" else args.resume
        resume = ResumeRequest(step, args.allow_config_change, args.allow_data_change)
    try:
        train(config_from_args(args, *overrides), resume=resume, overwrite=args.overwrite)
    except TrainingInterrupted as stop:  # Ctrl-C: a checkpoint was saved
        print(f"rpo-jax train: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0
