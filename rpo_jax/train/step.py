"""The jitted train step: reference log-probs (no gradient) → policy loss/grad over micro-batches → AdamW.

Train state (a pytree of pure dicts, donated to the step):
  step, params (trainable), opt_state, rng, nonfinite_run (consecutive skipped steps), nonfinite_total.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.config.schema import Config
from rpo_jax.objective.logps import SequenceScores
from rpo_jax.objective.losses import loss_and_metrics
from rpo_jax.objective.packed_logps import group_fields, is_packed, sequence_logps
from rpo_jax.runtime.preemption import NO_STOP, HostVote, ask_hosts
from rpo_jax.train.policy import PolicyParams

TrainState = dict[str, Any]


def opt_state_shardings(opt_state: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Moments follow their parameter's sharding (matched by path suffix); scalars are replicated."""
    by_path = {tuple(str(k) for k in path): s for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        keys = tuple(str(k) for k in path)
        for start in range(len(keys)):
            if keys[start:] in by_path:
                return by_path[keys[start:]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, opt_state)


def _train_state_fn(optimizer: optax.GradientTransformation, seed: int) -> Callable[[Any], TrainState]:
    def create(params):
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.key_data(jax.random.key(seed)),
            "nonfinite_run": jnp.zeros((), jnp.int32),
            "nonfinite_total": jnp.zeros((), jnp.int32),
        }

    return create


def train_state_shardings(
    policy: PolicyParams, optimizer: optax.GradientTransformation, seed: int, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs, shardings); works on concrete or abstract `policy.trainable`."""
    abstract = jax.eval_shape(_train_state_fn(optimizer, seed), policy.trainable)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree.map(lambda _: replicated, abstract)
    shardings["params"] = policy.trainable_shardings
    shardings["opt_state"] = opt_state_shardings(abstract["opt_state"], policy.trainable_shardings, mesh)
    return abstract, shardings


def abstract_train_state(
    policy: PolicyParams, optimizer: optax.GradientTransformation, seed: int, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """What `init_train_state` returns, as ShapeDtypeStructs with shardings: nothing is allocated."""
    abstract, shardings = train_state_shardings(policy, optimizer, seed, mesh)
    shaped = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return shaped, shardings


def init_train_state(
    policy: PolicyParams, optimizer: optax.GradientTransformation, seed: int, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """(state, shardings). Everything is created inside one jit with explicit out_shardings: the optimizer
    moments land sharded like their parameters (zeros have no data dependence GSPMD could propagate from)."""
    _, shardings = train_state_shardings(policy, optimizer, seed, mesh)
    # The trainable params are passed through (not donated): callers keep `policy.trainable` valid.
    state = jax.jit(_train_state_fn(optimizer, seed), out_shardings=shardings)(policy.trainable)
    return state, shardings


def _split_micro(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...] taking rows j, j+k, ...: every device keeps an equal share of each micro-batch."""
    return {name: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1) for name, x in batch.items()}


def make_objective(cfg: Config, policy: PolicyParams, mesh: Mesh | None = None) -> tuple[Callable, Callable]:
    """Returns (reference_logps, policy_objective).

    reference_logps(trainable, frozen, reference, batch) -> [B, G] or None: from the batch (precomputed),
    nowhere (reference-free losses), or a forward of the separate copy / the LoRA-disabled base.
    policy_objective(trainable, frozen, batch, ref_logps, dropout_rng) -> (loss_B, metric sums).
    """
    mode = cfg.train.reference_mode
    score = dict(logits_chunk_size=cfg.loss.logits_chunk_size, vocab_chunk_size=cfg.loss.vocab_chunk_size, mesh=mesh)

    def reference_logps(trainable, frozen, reference, batch) -> jax.Array | None:
        if mode == "precomputed":
            return group_fields(batch)[2]
        if mode == "none":
            return None
        ref_model = policy.reference_model(trainable, frozen, reference)
        return jax.lax.stop_gradient(sequence_logps(ref_model, batch, use_lora=False, **score).logps)

    def policy_objective(trainable, frozen, batch, ref_logps_BG, dropout_rng=None):
        model = policy.merged_model(trainable, frozen)
        scores: SequenceScores = sequence_logps(model, batch, use_lora=True, lora_dropout_rng=dropout_rng, **score)
        margin_B, weight_B, _ = group_fields(batch)
        if is_packed(batch):  # empty slots score nothing: count 1 there so length-normalised losses stay finite
            scores = scores._replace(counts=jnp.where(weight_B[:, None] > 0, scores.counts, 1.0))
        loss_B, metrics = loss_and_metrics(scores, ref_logps_BG, margin_B, cfg.loss, weight_B)
        # Packed batches have empty example slots: they weigh 0 in the loss too (unpacked training has no weights).
        return (loss_B * weight_B if is_packed(batch) else loss_B), metrics

    return reference_logps, policy_objective


def make_micro_batch_grads(cfg: Config, policy: PolicyParams, mesh: Mesh) -> Callable:
    """grads_of(params, frozen, reference, micro_batch, rng) -> ((summed loss, metric sums), gradient of the sum)."""
    reference_logps, policy_objective = make_objective(cfg, policy, mesh)

    def grads_of(params, frozen, reference, batch, rng):
        # The reference forward runs before and outside value_and_grad: no tape, no remat, no gradient buffers.
        ref_logps_BG = reference_logps(params, frozen, reference, batch)

        def summed(p):
            loss_B, metric_sums = policy_objective(p, frozen, batch, ref_logps_BG, rng)
            return jnp.sum(loss_B), metric_sums

        return jax.value_and_grad(summed, has_aux=True)(params)

    return grads_of


def step_rng(state: TrainState) -> jax.Array:
    """The step's dropout key; micro-batch i uses `fold_in(step_rng, i)`."""
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def global_examples(batch: dict) -> jax.Array | int:
    """The examples the step's mean is over: packed batches carry a varying number (their weight-1 slots)."""
    return jnp.sum(batch["example_weight"]) if is_packed(batch) else batch["tokens"].shape[0]


def zero_metric_sums(grads_of: Callable, params, frozen, reference, micro_batch, rng) -> dict:
    """Zeros shaped like one micro-batch's metric sums (traced shapes only, nothing runs)."""
    return jax.tree.map(
        jnp.zeros_like, jax.eval_shape(lambda: grads_of(params, frozen, reference, micro_batch, rng)[0][1])
    )


def apply_gradients(
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    state: TrainState,
    grads,
    metric_sums,
    examples,
    complete: jax.Array | bool = True,
) -> tuple[TrainState, dict]:
    """The update from gradients summed over the global batch: AdamW on their mean, skipped when not finite.
    A step not `complete` (cut short by a stop between micro-batches) changes nothing, its counters included."""
    params = state["params"]
    # The objective is the mean over the global batch: summed per-example losses / number of examples.
    grads = jax.tree.map(lambda g: g / examples, grads)
    grad_norm = optax.global_norm(grads)
    loss = metric_sums["loss"][0] / metric_sums["loss"][1]
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite loss or gradient skips the update entirely (parameters and optimizer moments).
    applied = finite & complete
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)  # noqa: E731
    counted = lambda new, old: jnp.where(complete, new, old)  # noqa: E731
    new_state = {
        "step": state["step"] + jnp.asarray(complete, jnp.int32),
        "params": keep(new_params, params),
        "opt_state": keep(new_opt_state, state["opt_state"]),
        "rng": state["rng"],
        "nonfinite_run": counted(jnp.where(finite, 0, state["nonfinite_run"] + 1), state["nonfinite_run"]),
        "nonfinite_total": counted(state["nonfinite_total"] + (~finite).astype(jnp.int32), state["nonfinite_total"]),
    }
    metrics = {
        "sums": metric_sums,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state["step"]),
        "skipped": ~finite,
        "nonfinite_run": new_state["nonfinite_run"],
        "nonfinite_total": new_state["nonfinite_total"],
    }
    return new_state, metrics


def reference_shardings(policy: PolicyParams) -> Any:
    """The separate reference copy's shardings (None when there is no such copy)."""
    return policy.trainable_shardings if policy.reference is not None and not policy.uses_lora else None


def make_train_step(
    cfg: Config,
    policy: PolicyParams,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    state_sh: TrainState,
    batch_sh: dict,
    host_vote: HostVote | None = None,
) -> Callable:
    """Returns step(state, frozen, reference, batch) -> (state, metrics); compiled once per batch shape.

    The micro-batches run in one `lax.while_loop`. With `host_vote` (training), the program asks every host before
    the first micro-batch and after each one whether to stop or save (`ask_hosts`: a host callback per device, then
    the largest answer over all devices, so every process reads the same), and a stop ends the loop: a step cut
    short changes nothing (`metrics["micro_batches"]` < k) and the state before it is the one saved. Why one
    program rather than one per micro-batch dispatched from the host: XLA:CPU page-faults a fresh temporary buffer
    into every program run, and a vote cast from the host queues behind the micro-batch running, a micro-batch
    late. The price: JAX's persistent cache does not store a program with host callbacks, so the train step is
    compiled at every start (rpo_jax.runtime.compilation_cache); what asking costs per step:
    docs/benchmarks.md#a-stop-within-the-notice. Without `host_vote` (plan, bench) all k always run.

    Metrics beyond `apply_gradients`'s: `stop` (the agreed signal, NO_STOP when none), `save_requested` (a
    wall-clock save is due) and `micro_batches` (how many ran).
    """
    grads_of = make_micro_batch_grads(cfg, policy, mesh)
    k = cfg.train.grad_accum_steps
    replicated = NamedSharding(mesh, PartitionSpec())
    ask = ask_hosts(mesh, host_vote)

    def step(state: TrainState, frozen, reference, batch):
        micro = _split_micro(batch, k)
        params = state["params"]
        rng = step_rng(state)

        def another(carry) -> jax.Array:
            i, _, _, votes = carry
            return (i < k) & (votes[0] == NO_STOP)

        def accumulate(carry):
            i, grads_acc, metrics_acc, votes = carry
            mb = jax.tree.map(lambda x: x[i], micro)
            (_, metric_sums), grads = grads_of(params, frozen, reference, mb, jax.random.fold_in(rng, i))
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            metrics_acc = jax.tree.map(jnp.add, metrics_acc, metric_sums)
            # Asked once this micro-batch's loss exists (not as it starts), so a signal during it counts now.
            return i + 1, grads_acc, metrics_acc, jnp.maximum(votes, ask(metric_sums["loss"][0]))

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        zero_metrics = zero_metric_sums(grads_of, params, frozen, reference, jax.tree.map(lambda x: x[0], micro), rng)
        start = (jnp.int32(0), zero_grads, zero_metrics, ask(jnp.float32(0)))
        done, grads, metric_sums, votes = jax.lax.while_loop(another, accumulate, start)
        examples = global_examples(batch)
        new_state, metrics = apply_gradients(optimizer, schedule, state, grads, metric_sums, examples, done == k)
        return new_state, {**metrics, "stop": votes[0], "save_requested": votes[1] > 0, "micro_batches": done}

    return jax.jit(
        step,
        in_shardings=(state_sh, policy.frozen_shardings, reference_shardings(policy), batch_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
