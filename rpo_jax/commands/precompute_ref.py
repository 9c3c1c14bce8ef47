"""`rpo-jax precompute-ref --config PATH [--set a.b=v ...]`: the reference log-probs of a run's datasets.

`rpo-jax train` with `train.reference_mode=precomputed` computes them itself when its output folder has none for
the current data and reference; this command lets a cheaper machine (or an earlier job) do that pass first. They
are stored in `<train.output_dir>/ref_logps/`, keyed by the data fingerprint and the reference.
"""

from __future__ import annotations

import argparse

from rpo_jax.config.loading import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config.loading import config_from_args
    from rpo_jax.train.precompute import precompute_reference_logps
    from rpo_jax.train.preflight import refuse_precomputed_mixture
    from rpo_jax.train.run_data import check_output_dir, prepare_run_data

    cfg = config_from_args(args, "train.reference_mode=precomputed")
    refuse_precomputed_mixture(cfg)
    check_output_dir(cfg.train.output_dir)
    cfg = prepare_run_data(cfg)
    for path in (cfg.data.train_path, cfg.data.eval_path):
        if path:
            logps, stored = precompute_reference_logps(cfg, path)
            print(f"{path}: reference log-probs for {len(logps)} examples -> {stored}")
    return 0
