"""`rpo-jax precompute-ref --config PATH [--set a.b=v ...]`: attach reference log-probs to the run's datasets.

`rpo-jax train` with `train.reference_mode=precomputed` does this itself when they are missing or stale; the
command lets a cheaper machine (or an earlier job) do the reference pass ahead of training.
"""

from __future__ import annotations

import argparse

from data_pipeline.local_paths import local_path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=local_path_arg,
                        help="the run config (model, init_checkpoint, data paths)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    from rpo_jax.commands.train import prepare_data
    from rpo_jax.config import load_config
    from rpo_jax.precompute import precompute_reference_logps

    cfg = prepare_data(load_config(args.config, [*args.overrides, "train.reference_mode=precomputed"]))
    for path in (cfg.data.train_path, cfg.data.eval_path):
        if path:
            logps, key = precompute_reference_logps(cfg, path)
            print(f"{path}: reference log-probs for {len(logps)} examples attached (key {key[:12]}…)")
    return 0
