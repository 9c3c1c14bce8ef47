"""`rpo-jax train --config PATH [--output-dir DIR] [--steps N] [--resume] [--set a.b=value ...]`."""

from __future__ import annotations

import argparse

from data_pipeline.local_paths import local_path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=local_path_arg, help="YAML run config (see configs/run/)")
    parser.add_argument("--output-dir", type=local_path_arg, help="overrides train.output_dir")
    parser.add_argument("--steps", type=int, help="overrides train.steps")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the checkpoint's config differs")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume even if the dataset fingerprint differs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")


def prepare_data(cfg):
    """Tokenizes data.pairs_path / data.eval_pairs_path into data.train_path / data.eval_path when needed.

    Empty train/eval paths default to `<train.output_dir>/data/{train,eval}`. Returns the config with the paths
    filled in. Multi-host: process 0 builds (atomically) while the others wait at a barrier, then everyone reads.
    """
    if not (cfg.data.pairs_path or cfg.data.eval_pairs_path):
        return cfg
    import dataclasses
    from pathlib import Path

    import jax

    from data_pipeline.prepare import ensure_shards
    from data_pipeline.truncation import TruncationSettings
    from rpo_jax import distributed

    distributed.maybe_initialize()
    data_dir = Path(cfg.train.output_dir) / "data"
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, train_path=cfg.data.train_path or (str(data_dir / "train") if cfg.data.pairs_path else ""),
        eval_path=cfg.data.eval_path or (str(data_dir / "eval") if cfg.data.eval_pairs_path else "")))
    settings = TruncationSettings(max_length=cfg.data.max_length, mode=cfg.data.truncation)
    jobs = [(cfg.data.pairs_path, cfg.data.train_path), (cfg.data.eval_pairs_path, cfg.data.eval_path)]
    for pairs, target in jobs:
        if not pairs:
            continue
        if jax.process_index() == 0:
            manifest, rebuilt = ensure_shards(pairs, cfg.data.tokenizer_path, target, settings)
            if rebuilt:
                counts = manifest["counts"]
                print(f"tokenized {pairs} -> {target}: {counts['examples']} examples, "
                      f"dropped {counts['dropped']}", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("rpo_jax_prepare_data")
    return cfg


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config import load_config
    from rpo_jax.trainer import Trainer, check_output_dir

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    check_output_dir(cfg.train.output_dir)  # before tokenizing into it or compiling anything
    cfg = prepare_data(cfg)
    trainer = Trainer(cfg, resume=args.resume, allow_config_change=args.allow_config_change,
                      allow_data_change=args.allow_data_change)
    records = trainer.fit()
    trainer.finish(records)
    return 0
