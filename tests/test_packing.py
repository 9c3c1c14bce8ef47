"""Packed rows (`data.packing`): plan (groups never split, mirrors together), exact log-probs and gradients against
the unpacked batch on real tokenized default pairs (truncated ones included) and IOPO quadruples, loader resume."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipeline.records.build import build_shards
from data_pipeline.records.loader import CollatePairs
from data_pipeline.records.packed_loader import make_packed_loader
from data_pipeline.records.packing import first_fit_decreasing, layout_row, packed_length, plan_rows
from data_pipeline.records.pair_example import ShardRecords
from data_pipeline.records.shards import read_manifest
from data_pipeline.records.tokenize import DEFAULT_TOKENIZER_DIR
from data_pipeline.records.truncation import TruncationSettings
from rpo_jax.config.schema import ModelConfig
from rpo_jax.model.llama import Llama
from rpo_jax.objective.logps import paired_logps
from rpo_jax.objective.packed_logps import packed_logps

MAX_LENGTH = 384  # short enough that keep_start truncates some of these pairs (about 40%), not all
MODEL = ModelConfig(
    vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, initializer_range=0.3,
)  # fmt: skip


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    from data_pipeline.scripts.build_experiment_pairs import build_from_selfsampled

    # RPO pairs of SmolLM2's own samples (the embedded default's pairs until 2026-12-07): their lengths are long-
    # tailed, so packing has gaps to fill and keep_start has pairs to cut; the controlled default pairs are all of
    # similar length.
    folder = tmp_path_factory.mktemp("packing")
    build_from_selfsampled(folder / "selfsampled", "rpo", 1)
    pairs = folder / "pairs.jsonl"
    lines = (folder / "selfsampled" / "pairs.jsonl").read_text().splitlines()[:120]
    pairs.write_text("\n".join(lines) + "\n")
    out = pairs.parent / "shards"
    build_shards(pairs, DEFAULT_TOKENIZER_DIR, out, TruncationSettings(MAX_LENGTH, "keep_start"), num_shards=2)
    return out


@pytest.fixture(scope="module")
def records(shard_dir) -> list[dict]:
    source = ShardRecords(shard_dir, read_manifest(shard_dir))
    return [source[i] | {"weight": 1.0} for i in range(len(source))]


def test_first_fit_decreasing_is_deterministic_and_fills_first_rows():
    assert first_fit_decreasing([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]
    with pytest.raises(ValueError, match="does not fit rows of 8"):
        first_fit_decreasing([9], 8)


def test_plan_keeps_units_whole_and_covers_every_example(shard_dir, records):
    lengths = np.asarray([packed_length(r, True) for r in records])
    units = [(i, i + 1) for i in range(0, 40, 2)] + [(i,) for i in range(40, len(records))]
    rows = plan_rows(units, lengths, 4 * MAX_LENGTH)
    flat = [e for row in rows for e in row]
    assert sorted(flat) == list(range(len(records)))
    for row in rows:
        assert sum(lengths[e] for e in row) <= 4 * MAX_LENGTH
        for a, b in units[:20]:
            assert (a in row) == (b in row)
    assert rows == plan_rows(units, lengths, 4 * MAX_LENGTH)
    manifest = read_manifest(shard_dir)
    packed = manifest["packing"]
    assert packed["none"]["fill"] < packed["packed"]["fill"] <= 1.0
    assert packed["packed_shared_prompt"]["sequence_tokens_per_position"] > packed["packed"]["fill"]


def _model(attention="blockwise"):
    return Llama(dataclasses.replace(MODEL, attention=attention), rngs=nnx.Rngs(0))


def _unpacked(records):
    longest = max(len(row) for r in records for row in r["rows"])
    return CollatePairs(longest, 2, None)([{**r, "pad_to": 0} for r in records])  # pad_to 0: to max_length


def _packed(records, shared, rows_of):
    """Rows holding `rows_of[r]` consecutive records each, slots = the largest row."""
    slots, out, start = max(rows_of), [], 0
    for n in rows_of:
        capacity = sum(len(row) for r in records for row in r["rows"])
        out.append(layout_row(records[start : start + n], capacity, slots, 2, shared))
        start += n
    batch = {k: np.stack([row[k] for row in out]) for k in out[0]}
    if not shared:
        del batch["prefix_ids"]
    return batch, slots


def _slot_order(rows_of, slots):
    """Flat slot index (r·J + j) of each record, in record order."""
    return [r * slots + j for r, n in enumerate(rows_of) for j in range(n)]


def _check_equal(records, shared, impl, rows_of):
    model = _model(impl)
    chunk = dict(logits_chunk_size=256)
    ref = paired_logps(model, jax.tree.map(jnp.asarray, _unpacked(records)), **chunk)
    batch, slots = _packed(records, shared, rows_of)
    got = packed_logps(model, jax.tree.map(jnp.asarray, batch), **chunk)
    order = _slot_order(rows_of, slots)
    np.testing.assert_allclose(np.asarray(got.logps)[order], np.asarray(ref.logps), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.counts)[order], np.asarray(ref.counts))
    empty = np.setdiff1d(np.arange(len(rows_of) * slots), order)
    assert not np.asarray(got.logps)[empty].any()
    return model, batch, order


@pytest.mark.parametrize("shared", [False, True], ids=["packed", "shared_prompt"])
@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_packed_logps_equal_unpacked(records, shared, impl):
    truncated = [i for i, r in enumerate(records) if max(len(row) for row in r["rows"]) == MAX_LENGTH]
    assert truncated, "no truncated pair among the first records"
    picked = [records[i] for i in sorted({*truncated[:2], 0, 1, 2, 3, 4})]
    _check_equal(picked, shared, impl, rows_of=[3, len(picked) - 3])


def test_packed_gradients_equal_unpacked(records):
    picked = records[:5]
    rows_of = [2, 3]
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)), jnp.float32)
    graphdef, params = nnx.split(_model())

    def unpacked_loss(p):
        batch = jax.tree.map(jnp.asarray, _unpacked(picked))
        scores = paired_logps(nnx.merge(graphdef, p), batch, logits_chunk_size=64)
        return jnp.sum(scores.logps * weights)

    batch, slots = _packed(picked, True, rows_of)
    order = jnp.asarray(_slot_order(rows_of, slots))

    def packed_loss(p):
        scores = packed_logps(nnx.merge(graphdef, p), jax.tree.map(jnp.asarray, batch), logits_chunk_size=64)
        return jnp.sum(scores.logps[order] * weights)

    ref, got = jax.grad(unpacked_loss)(params), jax.grad(packed_loss)(params)
    # atol 1e-5 of each tensor's largest entry: fp32 sums over rows of 3,840 tokens put the gradients of every
    # attention path (xla, blockwise with blocks of 128 or 512) 1.5-2.3e-6 of that largest entry away from the
    # unpacked ones; a token seeing a wrong key moves them by orders of magnitude more.
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))


def _iopo(a: dict, b: dict) -> dict:
    """An IOPO quadruple (x1,y1), (x1,y2), (x2,y2), (x2,y1) from two tokenized pairs' prompts and responses."""
    x1, x2 = a["rows"][0][: a["response_starts"][0]], b["rows"][0][: b["response_starts"][0]]
    y1, y2 = a["rows"][0][a["response_starts"][0] :][:40], a["rows"][1][a["response_starts"][1] :][:40]
    rows = [np.concatenate(p) for p in ((x1, y1), (x1, y2), (x2, y2), (x2, y1))]
    starts = np.asarray([len(x1), len(x1), len(x2), len(x2)], np.int32)
    return {**a, "rows": rows, "response_starts": starts, "recipe": "iopo"}


@pytest.mark.parametrize("shared", [False, True], ids=["packed", "shared_prompt"])
def test_iopo_quadruples_packed_equal_unpacked(records, shared):
    quads = [_iopo(records[i], records[i + 1]) for i in (0, 2, 4)]
    assert packed_length(quads[0], True) < packed_length(quads[0], False)
    _check_equal(quads, shared, "blockwise", rows_of=[2, 1])


def test_loader_resumes_mid_epoch_exactly(shard_dir):
    def loader():
        return make_packed_loader(shard_dir, rows_per_batch=2, seed=3, shared_prompt=True, group_mirrors=True)

    first = loader()
    for _ in range(3):
        next(first)
    state = first.get_state_bytes()
    expected = [next(first) for _ in range(4)]
    resumed = loader()
    resumed.set_state_bytes(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_loader_batches_hold_every_example_once_per_epoch(shard_dir):
    manifest = read_manifest(shard_dir)
    ref = np.arange(manifest["num_examples"] * 2, dtype=np.float32).reshape(-1, 2) * -1.0
    it = make_packed_loader(shard_dir, rows_per_batch=1, seed=0, shared_prompt=False, num_epochs=1, ref_logps=ref)
    seen = []
    for batch in it:
        live = batch["example_index"] >= 0
        np.testing.assert_array_equal(batch["example_weight"], live.astype(np.float32))
        np.testing.assert_array_equal(batch["ref_logps"][live], ref[batch["example_index"][live]])
        assert "prefix_ids" not in batch
        seen.extend(batch["example_index"][live].tolist())
    assert sorted(seen) == list(range(manifest["num_examples"]))
    assert it.num_batches == it.packing["rows"]


def _synthetic_records(n: int, vocab: int, seed: int) -> list[dict]:
    """Pairs with one prompt and two responses of different lengths, as `pair_example.ShardRecords` gives them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(3, vocab, int(rng.integers(2, 9)), dtype=np.int32)
        responses = [rng.integers(3, vocab, int(rng.integers(1, 12)), dtype=np.int32) for _ in "cr"]
        rows = [np.concatenate([prompt, response]) for response in responses]
        starts = np.asarray([len(prompt)] * 2, np.int32)
        out.append(dict(rows=rows, response_starts=starts, margin=i % 3, example_index=i, weight=1.0))
    return out


def test_packed_train_step_equals_unpacked(shared=True):
    """Same examples, one step each way (packed: 2 rows as 2 micro-batches, an empty slot): the per-pair mean loss,
    gradient norm and updated parameters agree."""
    from synthetic import tiny_config
    from test_train_step import LINEAR_OPTIM, assert_trees_close, run_steps

    from rpo_jax.config.schema import MeshConfig

    cfg = tiny_config(loss={"loss_type": ["rpo", "sigmoid_norm"], "loss_weights": [1.0, 0.5]}, optim=LINEAR_OPTIM)
    records = _synthetic_records(5, cfg.model.vocab_size, seed=1)
    skip = ("example_index", "example_weight")
    collated = CollatePairs(24, 0, None)([{**r, "pad_to": 0} for r in records])
    unpacked = {k: v for k, v in collated.items() if k not in skip}
    rows = [layout_row(records[:3], 128, 3, 0, shared), layout_row(records[3:], 128, 3, 0, shared)]
    packed = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "example_index"}
    if not shared:
        del packed["prefix_ids"]
    one = dict(devices=jax.devices()[:1], mesh_cfg=MeshConfig(data=1, fsdp=1, tensor=1))
    ref_params, ref_records, _ = run_steps(cfg, [unpacked], **one)
    accum = tiny_config(loss=dict(cfg.loss.__dict__), optim=LINEAR_OPTIM, train={"grad_accum_steps": 2})
    params, records_out, _ = run_steps(accum, [packed], **one)
    for key in ("loss", "rewards/margins", "logps/chosen", "num_tokens"):
        assert records_out[0][key] == pytest.approx(ref_records[0][key], rel=1e-5), key
    assert records_out[0]["grad_norm"] == pytest.approx(ref_records[0]["grad_norm"], rel=1e-5)
    assert_trees_close(params, ref_params, atol=1e-6)


def test_packed_batch_checks_name_the_problem():
    from rpo_jax.config.schema import LossConfig
    from rpo_jax.train.batch_checks import BatchError, validate_packed_batch

    records = _synthetic_records(3, 97, seed=2)
    batch = layout_row(records, 64, 4, 0, True)
    batch = {k: v[None] for k, v in batch.items() if k != "example_index"}
    validate_packed_batch(batch, LossConfig())
    bad = {**batch, "example_weight": np.ones_like(batch["example_weight"])}  # slot 3 is empty
    with pytest.raises(BatchError, match="slot 3, sequence 0 .chosen. scores no token"):
        validate_packed_batch(bad, LossConfig())
    bad = {**batch, "loss_mask": np.roll(batch["loss_mask"], 1, axis=1)}
    with pytest.raises(BatchError, match="disagree"):
        validate_packed_batch(bad, LossConfig())


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_shared_prompt_mask_is_refused_by_kernels_that_cannot_express_it(impl):
    from rpo_jax.config.schema import ConfigError
    from rpo_jax.model.attention import AttentionMask, attend

    q = jnp.zeros((1, 8, 2, 8))
    seg = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ConfigError, match=f"model.attention={impl} cannot express"):
        attend(impl, q, q, q, AttentionMask(seg, 1, seg), scale=1.0)


def test_processes_get_disjoint_rows_that_cover_the_epoch(shard_dir):
    seen = []
    for index in range(2):
        it = make_packed_loader(
            shard_dir, rows_per_batch=2, seed=5, shared_prompt=True, shard_index=index, shard_count=2, num_epochs=1
        )
        batches = list(it)
        assert len(batches) == it.num_batches
        seen.append({int(i) for b in batches for i in b["example_index"].ravel() if i >= 0})
    assert not seen[0] & seen[1]
    rows, per_step = it.packing["rows"], 2 * 2
    assert len(seen[0] | seen[1]) <= read_manifest(shard_dir)["num_examples"]
    assert it.num_batches == rows // per_step
