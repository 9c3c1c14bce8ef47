"""Batched autoregressive sampling with a KV cache: a jit-compiled prefill and a `while_loop` decode.

Prompts are LEFT-padded to a common length P so every row writes its next key/value at the same cache index;
positions count only real tokens (the first real token of each row has position 0) and padded keys carry segment
id 0, so padding never changes a row's result. The cache holds each layer's keys and values as [B, K, S, Dh] with
S = P + N (N: room for new tokens), batch split over ("data", "fsdp") like training (`cached_forward`). The model's
weights are laid out for decoding once, when the sampler is made (`decode_weights`: one set per layer, q/k/v and
gate/up fused).

What compiles: a program per shape (B, P, N) and `DecodeSpec` (EOS ids, pad id, top-k). Each row's temperature,
top-p and token limit are traced values (`RowControls`), so a new temperature, top_p or max_tokens reuses the
compiled program. A row stops at one of its EOS ids or at its own limit (on device); the loop ends when every row
has stopped, or after N tokens.

Two ways to run the same traced steps with the same keys (token t of a batch is drawn with fold_in(key, t)):
`Sampler.generate` runs prefill and the whole decode as one program (`rpo-jax generate`, `eval`); `Sampler.start`
then `Sampler.advance` decode in chunks of steps with the state kept on device, so a server can stream each
chunk's tokens, end rows at a stop string and drop cancelled rows between chunks. Stop strings are the caller's:
`truncate_at_stop` cuts a finished text, `serving_text` tracks them while decoding.

How a token is picked from the logits (temperature, top-k, top-p per row): `token_choice`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rpo_jax.config.schema import ModelConfig
from rpo_jax.generate.cached_forward import Cache, empty_cache, forward_with_cache
from rpo_jax.generate.decode_weights import DecodeWeights, decode_weights
from rpo_jax.generate.token_choice import RowControls, next_token
from rpo_jax.runtime.sharding import BATCH_AXES, data_parallel_size


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The compile-time constants of a decode program, besides its shapes."""

    new_tokens: int  # N: the cache's room for generated tokens, the most any row generates
    eos_ids: tuple[int, ...]
    pad_id: int
    top_k: int = 0  # 0 = off; a static size for lax.top_k


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """One setting for every row of `Sampler.generate`; only max_new_tokens, eos_ids, pad_id and top_k (and the
    prompt length, rounded up to prompt_length_multiple) choose the compiled program."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    prompt_length_multiple: int = 64  # P is rounded up to this, so prompts of similar length share a compile

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.eos_ids:
            raise ValueError("eos_ids must name at least one token id")
        if self.prompt_length_multiple < 1:
            raise ValueError(f"prompt_length_multiple must be >= 1, got {self.prompt_length_multiple}")

    def spec(self) -> DecodeSpec:
        return DecodeSpec(self.max_new_tokens, tuple(self.eos_ids), self.pad_id, self.top_k)


class DecodeState(NamedTuple):
    """What the decode loop carries; `step` tokens of the batch have been generated."""

    step: jax.Array
    last_B: jax.Array  # the token fed at the next step
    done_B: jax.Array  # stopped: an EOS id, its limit, or the caller ended it
    eos_B: jax.Array  # stopped by an EOS id
    count_B: jax.Array  # tokens generated per row (an EOS that stopped it not counted)
    out_BN: jax.Array  # generated tokens, pad_id after a row stopped
    cache: Cache
    segments_BS: jax.Array
    prompt_len_B: jax.Array
    controls: RowControls
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class Completion:
    tokens: list[int]  # generated ids, without the EOS that ended them
    stopped: bool  # True if an EOS id ended the row, False if its token limit did


@dataclasses.dataclass(frozen=True)
class Progress:
    """A host copy of a chunked decode's rows after its latest chunk."""

    step: int
    out_BN: np.ndarray
    count_B: np.ndarray
    done_B: np.ndarray
    eos_B: np.ndarray

    def tokens(self, row: int) -> list[int]:
        return self.out_BN[row, : self.count_B[row]].tolist()


@dataclasses.dataclass
class Decoding:
    """A batch decoded chunk by chunk (`Sampler.start`, `Sampler.advance`): its device state and static spec."""

    spec: DecodeSpec
    state: DecodeState


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, length], segment ids [B, length]: 1 on real tokens, 0 on left padding)."""
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if not 0 < len(prompt) <= length:
            raise ValueError(f"prompt {row}: length {len(prompt)} not in [1, {length}]")
        tokens[row, length - len(prompt) :] = prompt
        segments[row, length - len(prompt) :] = 1
    return tokens, segments


def _record(s: DecodeState, token_B: jax.Array, spec: DecodeSpec) -> DecodeState:
    """Writes token `s.step` of every live row; a row stops at an EOS id (not counted) or at its limit."""
    live_B = ~s.done_B
    eos_B = live_B & jnp.isin(token_B, jnp.asarray(spec.eos_ids, jnp.int32))
    kept_B = live_B & ~eos_B
    token_B = jnp.where(kept_B, token_B, spec.pad_id)
    count_B = s.count_B + kept_B.astype(jnp.int32)
    return s._replace(
        step=s.step + 1,
        last_B=token_B,
        done_B=s.done_B | eos_B | (count_B >= s.controls.limit_B),
        eos_B=s.eos_B | eos_B,
        count_B=count_B,
        out_BN=jax.lax.dynamic_update_slice(s.out_BN, token_B[:, None], (0, s.step)),
    )


@dataclasses.dataclass(frozen=True)
class _Model:
    """What the traced programs close over: the config, the mesh and the LoRA scale (0: decode the base)."""

    cfg: ModelConfig
    mesh: Mesh
    lora_scale: float


def _prefill(m: _Model, weights: DecodeWeights, tokens_BP, segments_BP, controls, key, spec: DecodeSpec) -> DecodeState:
    B, P = tokens_BP.shape
    N = spec.new_tokens
    cache = empty_cache(m.cfg, B, P + N, m.mesh)
    # Generated positions are all real; causality hides the ones not yet written.
    segments_BS = jnp.concatenate([segments_BP, jnp.ones((B, N), jnp.int32)], axis=1)
    positions_BP = jnp.maximum(jnp.cumsum(segments_BP, axis=1) - 1, 0)
    logits_BV, cache = forward_with_cache(
        m.cfg, weights, tokens_BP, positions_BP, segments_BP, segments_BS, cache, 0, m.lora_scale
    )
    out_BN = jnp.full((B, N), spec.pad_id, jnp.int32)
    out_BN = jax.lax.with_sharding_constraint(out_BN, NamedSharding(m.mesh, PartitionSpec(BATCH_AXES)))
    no_B = jnp.zeros((B,), bool)
    start = (jnp.int32(0), out_BN[:, 0], no_B, no_B, jnp.zeros((B,), jnp.int32), out_BN, cache)
    s = DecodeState(*start, segments_BS, jnp.sum(segments_BP, axis=1), controls, key)
    return _record(s, next_token(logits_BV, jax.random.fold_in(key, 0), controls, spec.top_k), spec)


def _decode(m: _Model, weights: DecodeWeights, s: DecodeState, until, spec: DecodeSpec) -> DecodeState:
    """Decode steps until step `until` (<= N) or until every row has stopped."""
    B, S = s.segments_BS.shape
    P = S - spec.new_tokens

    def body(s: DecodeState) -> DecodeState:
        # Token `step - 1` is fed at cache index P + step - 1 and position prompt_len + step - 1.
        positions_B1 = (s.prompt_len_B + s.step - 1)[:, None]
        fed_B1, one_B1 = s.last_B[:, None], jnp.ones((B, 1), jnp.int32)
        write_index = P + s.step - 1
        logits_BV, cache = forward_with_cache(
            m.cfg, weights, fed_B1, positions_B1, one_B1, s.segments_BS, s.cache, write_index, m.lora_scale
        )
        token_B = next_token(logits_BV, jax.random.fold_in(s.key, s.step), s.controls, spec.top_k)
        return _record(s._replace(cache=cache), token_B, spec)

    return jax.lax.while_loop(lambda s: (s.step < until) & ~jnp.all(s.done_B), body, s)


def _whole_program(m: _Model, weights, tokens_BP, segments_BP, controls, key, *, spec):
    s = _prefill(m, weights, tokens_BP, segments_BP, controls, key, spec)
    s = _decode(m, weights, s, spec.new_tokens, spec)
    return s.out_BN, s.count_B, s.eos_B


def _decode_program(m: _Model, weights, state, until, ended_B, *, spec):
    return _decode(m, weights, state._replace(done_B=state.done_B | ended_B), until, spec)


class Sampler:
    """Generates from a `Llama` on `mesh`; programs are compiled per shape and `DecodeSpec` (see the module doc)."""

    def __init__(self, model, mesh: Mesh, *, use_lora: bool = True):
        """`model`: a `Llama`; its layer weights are copied into the decode layout (`decode_weights`), its embedding,
        final norm and output projection shared. `use_lora=False` decodes a LoRA model's base."""
        self.mesh = mesh
        self.batch_multiple = data_parallel_size(mesh)
        self.weights = decode_weights(model, mesh, use_lora)
        m = _Model(model.cfg, mesh, model.lora_scale if use_lora else 0.0)
        self._rows_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
        jit = functools.partial(jax.jit, static_argnames="spec")
        self._whole = jit(functools.partial(_whole_program, m))
        self._prefill = jit(functools.partial(_prefill, m))
        # The state (KV cache included) is donated: each chunk updates it in place.
        self._decode = jit(functools.partial(_decode_program, m), donate_argnames="state")

    def _batch(self, prompts, length: int, pad_id: int, temperature, top_p, limit):
        """Device arrays for `prompts` padded with copies of the first to a multiple of data*fsdp rows (limit 1:
        they stop after one token)."""
        extra = -len(prompts) % self.batch_multiple
        tokens_BP, segments_BP = left_pad(list(prompts) + [prompts[0]] * extra, pad_id, length)
        grid = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, None))
        controls = RowControls(
            np.asarray([*temperature, *[0.0] * extra], np.float32),
            np.asarray([*top_p, *[1.0] * extra], np.float32),
            np.asarray([*limit, *[1] * extra], np.int32),
        )
        return (
            jax.device_put(tokens_BP, grid),
            jax.device_put(segments_BP, grid),
            RowControls(*(jax.device_put(r, self._rows_sharding) for r in controls)),
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, key: jax.Array) -> list[Completion]:
        """One completion per prompt (token ids), decoded as one program."""
        if not prompts:
            return []
        m, n = params.prompt_length_multiple, len(prompts)
        length = -(-max(len(p) for p in prompts) // m) * m
        batch = self._batch(
            prompts, length, params.pad_id, [params.temperature] * n, [params.top_p] * n, [params.max_new_tokens] * n
        )
        out_BN, count_B, eos_B = jax.device_get(self._whole(self.weights, *batch, key, spec=params.spec()))
        return [Completion(out_BN[row, : count_B[row]].tolist(), bool(eos_B[row])) for row in range(n)]

    def start(self, prompts, temperature, top_p, limit, spec: DecodeSpec, prompt_length: int, key) -> Decoding:
        """Prefills `prompts` (one temperature, top_p and token limit <= spec.new_tokens each); the first token of
        every row is generated. Continue with `advance`."""
        if max(limit) > spec.new_tokens:
            raise ValueError(f"a row's limit {max(limit)} exceeds the decode's {spec.new_tokens} new tokens")
        batch = self._batch(prompts, prompt_length, spec.pad_id, temperature, top_p, limit)
        return Decoding(spec, self._prefill(self.weights, *batch, key, spec=spec))

    def advance(self, decoding: Decoding, steps: int, ended_rows: Sequence[int] = ()) -> None:
        """Decodes up to `steps` more tokens per row, first stopping `ended_rows` (a stop string, a cancel)."""
        ended_B = np.zeros(decoding.state.done_B.shape, bool)
        ended_B[list(ended_rows)] = True
        until = np.int32(min(int(decoding.state.step) + steps, decoding.spec.new_tokens))
        ended_B = jax.device_put(ended_B, self._rows_sharding)
        decoding.state = self._decode(self.weights, decoding.state, until, ended_B, spec=decoding.spec)

    @staticmethod
    def progress(decoding: Decoding) -> Progress:
        s = decoding.state
        return Progress(*jax.device_get((s.step, s.out_BN, s.count_B, s.done_B, s.eos_B)))


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """Cuts `text` before the earliest stop string; returns (text, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
