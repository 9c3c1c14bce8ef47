"""KV-cache sampler on a tiny random Llama: cached decoding against full recomputation, sampling controls, and
`rpo-jax generate` from either checkpoint format."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llama_hf_fixtures import params_and_hf_folder
from serve_fixtures import counted_compiles

from rpo_jax.cli import main
from rpo_jax.config.schema import MeshConfig, ModelConfig
from rpo_jax.generate.sampler import Sampler, SamplingParams, left_pad, truncate_at_stop
from rpo_jax.generate.token_choice import filter_logits
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import make_mesh

CFG = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.05,
)
PAD, EOS = 0, 1
# Mixed lengths, so rows are left-padded by different amounts (and 3 rows -> padded to the mesh's 4).
PROMPTS = [[5, 17, 42, 9, 77, 3, 120], [64, 2], [8, 8, 30, 101]]


@pytest.fixture(scope="module")
def model():
    return Llama(CFG, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])


@pytest.fixture(scope="module")
def sampler(model, mesh):
    return Sampler(model, mesh)


# Shared by several tests so the sampler compiles it once.
GREEDY = SamplingParams(max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD, temperature=0.0, prompt_length_multiple=8)


def last_logits_by_full_forward(model, seq, length):
    """Cache-free reference: logits at the last token of `seq`, run right-padded to `length` (one compile).

    Causal attention keeps the trailing filler from affecting the logits at the last real position.
    """
    tokens = jnp.asarray([list(seq) + [PAD] * (length - len(seq))], jnp.int32)
    return _full_forward(model, tokens)[0, len(seq) - 1]


@nnx.jit
def _full_forward(model, tokens):
    return model(tokens, jnp.arange(tokens.shape[1])[None])


def greedy_by_recompute(model, prompt, steps, stop_ids=()):
    """Reference: re-run the full forward on the whole sequence for every new token."""
    seq, out = list(prompt), []
    for _ in range(steps):
        token = int(jnp.argmax(last_logits_by_full_forward(model, seq, 20)))
        if token in stop_ids:
            break
        out.append(token)
        seq.append(token)
    return out


def test_left_pad_marks_real_tokens():
    tokens, segments = left_pad([[4, 5, 6], [7]], pad_id=0, length=4)
    np.testing.assert_array_equal(tokens, [[0, 4, 5, 6], [0, 0, 0, 7]])
    np.testing.assert_array_equal(segments, [[0, 1, 1, 1], [0, 0, 0, 1]])


def test_greedy_with_cache_equals_full_recompute(model, sampler):
    got = sampler.generate(PROMPTS, GREEDY, jax.random.key(0))
    for prompt, completion in zip(PROMPTS, got):
        want = greedy_by_recompute(model, prompt, GREEDY.max_new_tokens, stop_ids=(EOS,))
        assert completion.tokens == want
        assert len(set(want)) > 1, "degenerate reference: the test would not catch position errors"


def test_seeded_sampling_is_reproducible(sampler):
    params = SamplingParams(max_new_tokens=10, eos_ids=(EOS,), pad_id=PAD, temperature=1.0, top_p=0.9)
    first = sampler.generate(PROMPTS, params, jax.random.key(7))
    again = sampler.generate(PROMPTS, params, jax.random.key(7))
    other = sampler.generate(PROMPTS, params, jax.random.key(8))
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]


def test_top_k_one_equals_greedy(sampler):
    top1 = dataclasses.replace(GREEDY, temperature=1.5, top_k=1)
    assert [c.tokens for c in sampler.generate(PROMPTS, top1, jax.random.key(1))] == [
        c.tokens for c in sampler.generate(PROMPTS, GREEDY, jax.random.key(2))
    ]


def test_stops_at_any_eos_id(sampler):
    base = [c.tokens for c in sampler.generate(PROMPTS, GREEDY, jax.random.key(0))]
    # Two different ids that greedy decoding does produce (after >= 1 token in rows 0 and 1) act as EOS.
    first_new = lambda toks, skip: next(j for j in range(1, len(toks)) if toks[j] not in toks[:j] + list(skip))
    stop_a = base[0][first_new(base[0], ())]
    stop_b = base[1][first_new(base[1], (stop_a,))]
    stopped = sampler.generate(PROMPTS, dataclasses.replace(GREEDY, eos_ids=(stop_a, stop_b)), jax.random.key(0))
    cuts = [next((i for i, t in enumerate(toks) if t in (stop_a, stop_b)), None) for toks in base]
    assert any(cuts), f"no row stops after >= 1 token: {cuts}"
    for toks, cut, completion in zip(base, cuts, stopped):
        assert completion.tokens == toks[:cut]
        assert completion.stopped == (cut is not None)


def test_sampling_settings_are_traced_and_each_row_keeps_its_own(sampler):
    """Temperature, top_p and a row's token limit are traced: new values compile nothing. A row of temperature 0 is
    greedy whatever its neighbours draw, a row stops at its own limit, and decoding in chunks (what the server does)
    picks the same tokens as one program; a row ended between chunks is no longer extended."""
    greedy = [c.tokens for c in sampler.generate(PROMPTS, GREEDY, jax.random.key(0))]
    with counted_compiles() as compiled:
        for temperature, top_p in [(0.7, 0.9), (1.3, 1.0), (0.2, 0.5)]:
            settings = dataclasses.replace(GREEDY, temperature=temperature, top_p=top_p)
            sampler.generate(PROMPTS, settings, jax.random.key(1))
    assert not [name for name in compiled if "whole" in name], compiled
    spec, limits = GREEDY.spec(), [12, 5, 9]

    def start():
        return sampler.start(PROMPTS, [0.0, 1.0, 0.8], [1.0, 0.9, 1.0], limits, spec, 8, jax.random.key(3))

    whole, chunked, ended = start(), start(), start()
    sampler.advance(whole, spec.new_tokens)
    with counted_compiles() as compiled:  # other limits, chunk sizes and ended rows: the same two programs
        sampler.advance(ended, 2, ended_rows=[1])
        after_two = Sampler.progress(ended).tokens(1)
        sampler.advance(ended, spec.new_tokens)
        while not Sampler.progress(chunked).done_B[:3].all():
            sampler.advance(chunked, 3)
    assert not [name for name in compiled if "prefill" in name or "decode" in name], compiled
    rows = [[Sampler.progress(d).tokens(r) for r in range(3)] for d in (whole, chunked, ended)]
    assert rows[0] == rows[1] and rows[0][0] == greedy[0]
    assert all(len(tokens) <= limit for tokens, limit in zip(rows[0], limits)) and rows[0][1] != greedy[1]
    assert rows[2][1] == after_two == rows[0][1][: len(after_two)] and len(after_two) <= 3


def test_top_p_keeps_smallest_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 0, 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 0, 0.85)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])
    kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 2, 1.0)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])


def test_truncate_at_stop_uses_earliest_string():
    assert truncate_at_stop("abc<END>def###", ["###", "<END>"]) == ("abc", True)
    assert truncate_at_stop("abc", ["###"]) == ("abc", False)


def test_generate_from_hf_folder_equals_params_checkpoint(tmp_path):
    """A run's `hf/` export (tokenizer files included) samples exactly what the same weights as a params
    checkpoint do."""
    tokenizer = Path(__file__).resolve().parents[1] / "data_pipeline/assets/tokenizers/llama2-sp-32k"
    cfg = dataclasses.replace(CFG, vocab_size=32000)  # the shipped tokenizer's vocabulary
    ckpt, hf, _ = params_and_hf_folder(cfg, tmp_path, seed=3, tokenizer_dir=tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"key": k, "prompt": p}) + "\n"
            for k, p in enumerate(["Name three rivers.", "Write a haiku about snow"])
        )
    )
    outputs = []
    for checkpoint in (ckpt, hf):
        out = tmp_path / f"{checkpoint.name}.jsonl"
        assert (
            main(
                [
                    "generate",
                    "--checkpoint",
                    str(checkpoint),
                    "--tokenizer",
                    str(hf),
                    "--prompts",
                    str(prompts),
                    "--output",
                    str(out),
                    "--raw-prompt",
                    "--num-samples",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--seed",
                    "1",
                    "--batch-size",
                    "4",
                ]
            )
            == 0
        )
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 4 and all(row["num_tokens"] > 0 for row in outputs[0])
    assert len({row["response"] for row in outputs[0]}) > 1  # sampled, not one degenerate answer
