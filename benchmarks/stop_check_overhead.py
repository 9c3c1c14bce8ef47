"""What asking the hosts between micro-batches costs: the train step as it was before it could stop mid-step (its
micro-batches a `lax.scan`, nothing asked) against `make_train_step` with a `HostVote` (a `lax.while_loop` that
asks every host before the first micro-batch and after each one, never told to stop), same config, batch and
state, timed round-robin in one process so both see the same machine load. A second copy of the old step gives
the noise floor.

    python -m benchmarks.stop_check_overhead --accum 8 --pairs 8 --seq-len 128 --rounds 12 [--output FILE.json]

Prints the median step time of each and the median of each round's ratio to the old step; results:
docs/benchmarks.md#a-stop-within-the-notice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.workload import machine, make_batch, make_examples
from rpo_jax.config.loading import load_config
from rpo_jax.runtime.preemption import HostVote, StopSignals
from rpo_jax.runtime.sharding import batch_shardings, make_mesh
from rpo_jax.train.optim import make_optimizer
from rpo_jax.train.policy import build_policy
from rpo_jax.train.step import (
    _split_micro,
    apply_gradients,
    global_examples,
    init_train_state,
    make_micro_batch_grads,
    make_train_step,
    reference_shardings,
    step_rng,
    zero_metric_sums,
)


def scan_step(cfg, policy, optimizer, schedule, mesh, state_sh, batch_sh):
    """The step before the stop check (commit 3235ac6's `make_train_step`): the same helpers, a `lax.scan`."""
    grads_of, k = make_micro_batch_grads(cfg, policy, mesh), cfg.train.grad_accum_steps

    def step(state, frozen, reference, batch):
        micro, params, rng = _split_micro(batch, k), state["params"], step_rng(state)

        def accumulate(carry, xs):
            (mb, i), (grads_acc, metrics_acc) = xs, carry
            (_, metric_sums), grads = grads_of(params, frozen, reference, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, grads_acc, grads), jax.tree.map(jnp.add, metrics_acc, metric_sums)), None

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        zero_metrics = zero_metric_sums(grads_of, params, frozen, reference, jax.tree.map(lambda x: x[0], micro), rng)
        (grads, metric_sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), (micro, jnp.arange(k)))
        return apply_gradients(optimizer, schedule, state, grads, metric_sums, global_examples(batch))

    shardings = (state_sh, policy.frozen_shardings, reference_shardings(policy), batch_sh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step, in_shardings=shardings, out_shardings=(state_sh, replicated), donate_argnums=(0,))


def measure(args) -> dict:
    cfg = load_config("configs/run/tiny_rpo.yaml", [f"train.grad_accum_steps={args.accum}", "mesh.fsdp=-1"])
    mesh = make_mesh(cfg.mesh)
    policy = build_policy(cfg, mesh)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    batch_np = make_batch(
        make_examples(args.pairs, 2, args.seq_len, cfg.model.vocab_size, 0), 2, args.seq_len, 0, False
    )
    b_sh = batch_shardings(batch_np, mesh)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in batch_np.items()}
    states, state_sh = {}, None
    for name in ("before", "asking", "before_again"):
        states[name], state_sh = init_train_state(policy, optimizer, cfg.train.seed, mesh)
    steps = {
        "before": scan_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh),
        "asking": make_train_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh, HostVote(StopSignals())),
        "before_again": scan_step(cfg, policy, optimizer, schedule, mesh, state_sh, b_sh),
    }
    times = {name: [] for name in steps}
    for round_ in range(args.rounds + 1):  # round 0 compiles
        for name, step in steps.items():
            start = time.perf_counter()
            states[name], metrics = step(states[name], policy.frozen, policy.reference, batch)
            jax.block_until_ready((states[name], metrics))
            if round_:
                times[name].append(time.perf_counter() - start)
    # Each round's steps ran back to back: the median of their ratios discounts load that drifts between rounds.
    ratios = {name: statistics.median(t / b for t, b in zip(times[name], times["before"])) for name in times}
    return {
        "accum": args.accum,
        "pairs": args.pairs,
        "seq_len": args.seq_len,
        "devices": len(jax.devices()),
        "step_s": times,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "median_ratio_to_before": ratios,
        "machine": machine(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accum", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    result = measure(args)
    medians, ratios = result["median_step_s"], result["median_ratio_to_before"]
    print(
        f"{result['devices']} device(s), {args.pairs} pairs x {args.seq_len} tokens in {args.accum} micro-batches, "
        f"median step: " + ", ".join(f"{name} {medians[name] * 1e3:.0f} ms (x{ratios[name]:.3f})" for name in medians)
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
