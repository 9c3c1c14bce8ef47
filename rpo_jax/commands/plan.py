"""`rpo-jax plan --config PATH [--mesh data=1,fsdp=8,tensor=1] [--hbm-gb N] [--batch-size B --seq-len L]
[--set a.b=v ...] [--topology NAME] [--output FILE.json]`

Compiles the real train step for the config's model on abstract shapes (no parameter memory) over a mesh of
simulated CPU devices, and prints per-device memory, FLOPs and the parameter/optimizer arithmetic.

Simulated devices: XLA creates its CPU devices once, when JAX first initialises its backends, from
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. This command therefore sets that flag itself before
importing JAX; when JAX is already initialised with fewer CPU devices than the mesh needs (e.g. inside a test
process), it re-runs itself in a fresh interpreter with the flag set and returns that process's exit code.

`--topology NAME` (e.g. `v5p:2x2x1`) additionally compiles for that TPU topology with
`jax.experimental.topologies.get_topology_desc` when the default backend is TPU; elsewhere it reports that
this compile was skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from data_pipeline.local_paths import local_path_arg

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=local_path_arg, help="YAML run config (see configs/run/)")
    parser.add_argument("--mesh", default="", metavar="data=D,fsdp=F,tensor=T",
                        help="mesh axis sizes (override mesh.*); every axis must resolve to a number")
    parser.add_argument("--hbm-gb", type=float, help="device memory in GiB: report whether the step fits")
    parser.add_argument("--batch-size", type=int, help="global batch (groups); default data.global_batch_size")
    parser.add_argument("--seq-len", type=int,
                        help="tokens per row; default the largest data.length_buckets entry, else data.max_length")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--topology", default="", help="TPU topology to also compile for (TPU backend only)")
    parser.add_argument("--output", type=local_path_arg, help="write the report as JSON here")


def _mesh_overrides(text: str) -> list[str]:
    from rpo_jax.config import ConfigError

    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        if name not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise ConfigError(f"--mesh: {item!r} must look like data=1, fsdp=8 or tensor=4")
        out.append(f"mesh.{name}={int(value)}")
    return out


def _argv(args: argparse.Namespace) -> list[str]:
    argv = ["--config", args.config, "--mesh", args.mesh, "--topology", args.topology]
    for flag, value in (("--hbm-gb", args.hbm_gb), ("--batch-size", args.batch_size), ("--seq-len", args.seq_len),
                        ("--output", args.output)):
        if value is not None:
            argv += [flag, str(value)]
    for override in args.overrides:
        argv += ["--set", override]
    return argv


def _with_device_count(flags: str, count: int) -> str:
    flags = re.sub(rf"{DEVICE_COUNT_FLAG}=\d+", "", flags)
    return f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()


def _write_json(path: str, report: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, target)


def run(args: argparse.Namespace) -> int:
    from rpo_jax.config import ConfigError, load_config

    cfg = load_config(args.config, [*args.overrides, *_mesh_overrides(args.mesh)])
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if -1 in sizes:
        raise ConfigError(f"mesh {sizes}: plan needs every axis size (pass --mesh data=..,fsdp=..,tensor=..)")
    needed = math.prod(sizes)
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = _with_device_count(os.environ.get("XLA_FLAGS", ""), needed)
    import jax

    if len(jax.devices("cpu")) < needed:
        env = {**os.environ, "XLA_FLAGS": _with_device_count(os.environ.get("XLA_FLAGS", ""), needed)}
        print(f"re-running with {needed} simulated CPU devices ({len(jax.devices('cpu'))} exist here)", flush=True)
        return subprocess.run([sys.executable, "-m", "rpo_jax.cli", "plan", *_argv(args)], env=env).returncode

    from rpo_jax.planning import format_report, plan_train_step
    from rpo_jax.sharding import make_mesh

    batch_size = args.batch_size or cfg.data.global_batch_size
    seq_len = args.seq_len or max(cfg.data.length_buckets, default=cfg.data.max_length)
    mesh = make_mesh(cfg.mesh, jax.devices("cpu")[:needed])
    report = plan_train_step(cfg, mesh, batch_size, seq_len, args.hbm_gb)
    report["config"] = args.config
    print(format_report(report))
    if args.topology:
        if jax.default_backend() == "tpu":
            from jax.experimental import topologies

            topology = topologies.get_topology_desc(args.topology, "tpu")
            target = plan_train_step(cfg, make_mesh(cfg.mesh, topology.devices), batch_size, seq_len, args.hbm_gb)
            report["target_topology"] = {"name": args.topology, **target}
            print(f"\ncompiled for TPU topology {args.topology}:\n{format_report(target)}")
        else:
            report["target_topology"] = {"name": args.topology,
                                         "skipped": f"default backend is {jax.default_backend()}, not tpu"}
            print(f"TPU topology {args.topology}: compile skipped (default backend is {jax.default_backend()})")
    if args.output:
        _write_json(args.output, report)
    return 0
