"""`rpo-jax plan --config PATH [--mesh data=1,fsdp=8,tensor=1] [--devices N] [--hbm-gb N] [--batch-size B
--seq-len L] [--set a.b=v ...] [--topology NAME] [--exact-dtypes] [--output FILE.json]`

Compiles the real train step for the config's model on abstract shapes (no parameter memory) over a mesh of
simulated CPU devices (`rpo_jax.runtime.cpu_devices`), and prints per-device memory, FLOPs and the parameter/optimizer
arithmetic (`rpo_jax.plan.planning`). A -1 mesh axis is resolved as training resolves it, against `--devices`, else
the topology planned for, else this machine's devices (`rpo_jax.plan.target_mesh`); the report names the mesh.
`--topology NAME` (e.g. `v5p:2x2x1`) also compiles for that TPU topology (`mesh.dcn_data` slices of it) when the
default backend is TPU; elsewhere the report says that compile was skipped.
"""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from rpo_jax.config.loading import add_config_arguments, add_mesh_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_mesh_argument(parser)
    parser.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="plan for N devices, all slices together: a -1 mesh axis takes what the others leave of a slice; an "
        "explicit mesh must use N (default: the --topology's devices on a TPU backend, else this machine's devices)",
    )
    parser.add_argument("--hbm-gb", type=float, help="device GiB: report whether the step fits (default: not checked)")
    parser.add_argument("--batch-size", type=int, help="global batch (groups; default: data.global_batch_size)")
    parser.add_argument(
        "--seq-len",
        type=int,
        help="tokens per row; default the largest data.length_buckets entry, else data.max_length",
    )
    parser.add_argument(
        "--topology", default="", help="TPU slice topology to compile for too, dcn_data times (TPU only; default: none)"
    )
    parser.add_argument(
        "--exact-dtypes",
        action="store_true",
        help="compile bfloat16 as is on CPU (default: as float16, which XLA:CPU does not widen to float32)",
    )
    parser.add_argument("--output", type=local_path_arg, help="write the report as JSON here (default: print only)")


def run(args: argparse.Namespace) -> int:
    import math

    from data_pipeline.files import write_json_atomic
    from rpo_jax.config.loading import config_from_args
    from rpo_jax.plan.target_mesh import planned_device_count, resolve_plan_mesh
    from rpo_jax.runtime.cpu_devices import ensure_cpu_devices, rerun_with_cpu_devices

    cfg = config_from_args(args)
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if -1 in sizes or args.devices is not None:
        count, source = planned_device_count(args.devices, args.topology, cfg.mesh.dcn_data)
    else:
        count, source = math.prod(sizes) * cfg.mesh.dcn_data, "the mesh as given"
    if not ensure_cpu_devices(count):
        return rerun_with_cpu_devices(count, ["plan", *args.command_argv])
    cfg, mesh_from = resolve_plan_mesh(cfg, count, source)
    from rpo_jax.plan.planning import format_report, plan

    report = plan(
        cfg,
        args.batch_size or cfg.data.global_batch_size,
        args.seq_len or max(cfg.data.length_buckets, default=cfg.data.max_length),
        args.hbm_gb,
        args.topology,
        args.exact_dtypes,
    )
    report["config"] = args.config
    report["mesh_from"] = mesh_from
    print(format_report(report))
    if args.output:
        write_json_atomic(args.output, report, sort_keys=False)
    return 0
