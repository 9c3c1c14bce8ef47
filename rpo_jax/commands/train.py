"""`rpo-jax train --config PATH [--output-dir DIR] [--steps N] [--resume] [--set a.b=value ...]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML run config (see configs/run/)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--steps", type=int, help="overrides train.steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the checkpoint's config differs")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume even if the dataset fingerprint differs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config import load_config
    from rpo_jax.default_run import prepare_embedded_data
    from rpo_jax.trainer import Trainer

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    cfg = prepare_embedded_data(cfg)
    trainer = Trainer(cfg, resume=args.resume, allow_config_change=args.allow_config_change,
                      allow_data_change=args.allow_data_change)
    records = trainer.fit()
    trainer.finish(records)
    return 0
