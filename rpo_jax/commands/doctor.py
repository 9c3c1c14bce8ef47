"""`rpo-jax doctor [--config PATH] [--set a.b=v ...] [--steps N] [--force-cpu] [--output FILE.json]`

The first thing to run on a GPU or TPU: N train steps of the config (default: the Llama-3.2-1B LoRA GPU recipe)
with tokens/s, MFU and peak device memory, then the chip's fused attention kernel (cuDNN, splash) against
blockwise attention, outputs and gradients (`rpo_jax.plan.doctor`). On CPU it lists what it would run and exits 0;
`--force-cpu` runs the whole path there (xla stands in for the fused kernel). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse

from data_pipeline.files import local_path_arg
from rpo_jax.config.loading import add_config_arguments

DEFAULT_CONFIG = "configs/run/rpo_llama3_2_1b_lora_gpu.yaml"
DEFAULT_STEPS = 20
CPU_SMOKE_TEST = "rpo-jax doctor --force-cpu --steps 2 --config configs/run/tiny_rpo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, f"YAML run config (default: the repository's {DEFAULT_CONFIG})", required=False)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="train steps timed (one micro-batch each)")
    parser.add_argument(
        "--force-cpu",
        action="store_true",
        help="run on CPU devices even without (or despite) an accelerator: a smoke test of doctor itself",
    )
    parser.add_argument("--output", type=local_path_arg, help="write the report as JSON here (default: print only)")


def run(args: argparse.Namespace) -> int:
    import jax

    from data_pipeline.files import write_json_atomic
    from rpo_jax.config.loading import config_root, load_config
    from rpo_jax.plan.doctor import describe_plan, format_report, plan_checks, run_checks
    from rpo_jax.plan.kernel_check import FUSED_KERNEL

    config_path = args.config or DEFAULT_CONFIG
    cfg = load_config(args.config or config_root() / DEFAULT_CONFIG, args.overrides)
    plan = plan_checks(cfg, config_path, args.steps)
    backend = jax.default_backend()
    listing = describe_plan(plan, args.output)
    if backend not in FUSED_KERNEL and not args.force_cpu:
        print(f"rpo-jax doctor: no GPU or TPU here (JAX backend: {backend}), so nothing ran. On one it runs:")
        print("\n".join(listing))
        print(f"The same path on CPU, as a smoke test of doctor (xla standing in for the kernel): {CPU_SMOKE_TEST}")
        if args.output:
            write_json_atomic(args.output, {"ran": False, "backend": backend, "would_run": listing}, sort_keys=False)
        return 0
    platform = "cpu" if args.force_cpu else backend
    print(f"rpo-jax doctor on {platform}:\n" + "\n".join(listing), flush=True)
    report = run_checks(plan, platform)
    print(format_report(report))
    if args.output:
        write_json_atomic(args.output, {"ran": True, **report}, sort_keys=False)
        print(f"wrote {args.output}")
    return 0 if report["passed"] else 1
