"""Real SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI), converted and run by our code.

Checks the GGUF conversion against a numpy forward written directly on the GGUF tensors (llama.cpp's own
interleaved-RoPE layout, no un-permuting), our model against transformers on the converted folder, and our
sampler end to end on a question with a known answer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smollm2_assets import smollm2_gguf, smollm2_hf_dir

pytestmark = pytest.mark.slow

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox"


@pytest.fixture(scope="module")
def hf_dir():
    return smollm2_hf_dir()


@pytest.fixture(scope="module")
def tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir))


@pytest.fixture(scope="module")
def ours(hf_dir):
    from flax import nnx

    from rpo_jax.config.schema import MeshConfig
    from rpo_jax.io.hf import load_hf_state
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.sharding import make_mesh

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    cfg, state = load_hf_state(hf_dir, mesh)
    graphdef = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))[0]
    return nnx.merge(graphdef, state), mesh


def _our_logits(model, ids):
    tokens = jnp.asarray([ids], jnp.int32)
    return np.asarray(model(tokens, jnp.arange(len(ids))[None]))[0]


def numpy_gguf_forward(gguf_path, ids):
    """fp32 Llama forward on the raw dequantized GGUF tensors, with llama.cpp's adjacent-pair RoPE."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(gguf_path))
    meta = lambda k: reader.fields[k].contents()
    w = {
        t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(d) for d in t.shape])))
        for t in reader.tensors
    }
    H, K = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    eps, theta = meta("llama.attention.layer_norm_rms_epsilon"), meta("llama.rope.freq_base")
    T = len(ids)
    x = w["token_embd.weight"][ids].astype(np.float32)
    Dh = x.shape[1] // H
    angles = np.arange(T)[:, None] * theta ** (-np.arange(0, Dh, 2) / Dh)[None]  # [T, Dh/2]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    def norm(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    def rope(v):  # v [T, heads, Dh]; rotates pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    causal = np.tril(np.ones((T, T), bool))
    for i in range(meta("llama.block_count")):
        p = lambda n, i=i: w[f"blk.{i}.{n}.weight"]
        h = norm(x, p("attn_norm"))
        q = rope((h @ p("attn_q").T).reshape(T, H, Dh))
        k = np.repeat(rope((h @ p("attn_k").T).reshape(T, K, Dh)), H // K, axis=1)
        v = np.repeat((h @ p("attn_v").T).reshape(T, K, Dh), H // K, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(Dh)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", probs, v).reshape(T, H * Dh) @ p("attn_output").T
        h = norm(x, p("ffn_norm"))
        gate = h @ p("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ p("ffn_up").T)) @ p("ffn_down").T
    head = w.get("output.weight", w["token_embd.weight"])
    return norm(x, w["output_norm.weight"]) @ head.T


def test_logits_match_numpy_forward_on_gguf_tensors(ours, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    want = numpy_gguf_forward(smollm2_gguf(), ids)
    got = _our_logits(ours[0], ids)
    assert got.shape == want.shape == (len(ids), 49152)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.torch
def test_logits_match_transformers_on_converted_folder(ours, tokenizer, hf_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    ids = tokenizer(PROMPT)["input_ids"]
    hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf_model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_our_logits(ours[0], ids), want, atol=1e-3, rtol=1e-4)


def test_answers_capital_of_france_greedily(ours, tokenizer):
    from rpo_jax.generate.sampler import Sampler, SamplingParams

    model, mesh = ours
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    params = SamplingParams(
        max_new_tokens=16, eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id, temperature=0.0
    )
    (completion,) = Sampler(model, mesh).generate([list(ids)], params, jax.random.key(0))
    text = tokenizer.decode(completion.tokens, skip_special_tokens=True)
    assert "Paris" in text, text
    assert completion.stopped


def test_generate_command_writes_build_pairs_rows(tmp_path, hf_dir):
    """`rpo-jax generate` end to end on a small random checkpoint with SmolLM2's tokenizer and chat template."""
    import json

    from flax import nnx

    from data_pipeline.pairs.readers import parse_response
    from rpo_jax.cli import main
    from rpo_jax.config.schema import LoraConfig, ModelConfig
    from rpo_jax.io.params import save_params
    from rpo_jax.model.llama import Llama

    cfg = ModelConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        eos_token_id=2,
        bos_token_id=1,
    )
    save_params(tmp_path / "ckpt", nnx.state(Llama(cfg, rngs=nnx.Rngs(0))), cfg, LoraConfig())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"key": 7, "prompt": "Say hi."})
        + "\n"
        + json.dumps({"key": "m", "messages": [{"role": "user", "content": "Name a colour."}]})
        + "\n"
    )
    args = [
        "generate",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--tokenizer",
        str(hf_dir),
        "--prompts",
        str(prompts),
        "--num-samples",
        "3",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
        "--top-k",
        "50",
        "--batch-size",
        "4",
        "--seed",
        "5",
        "--mesh",
        "data=1,fsdp=-1,tensor=1",
    ]
    assert main([*args, "--output", str(tmp_path / "a.jsonl")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.jsonl")]) == 0
    text = (tmp_path / "a.jsonl").read_text()
    assert text == (tmp_path / "b.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [(r["key"], r["sample_id"]) for r in rows] == [(7, 0), (7, 1), (7, 2), ("m", 0), ("m", 1), ("m", 2)]
    assert rows[0]["prompt"] == "Say hi." and rows[3]["prompt"] == "Name a colour."
    assert all(r["num_tokens"] <= 6 and r["finish_reason"] in ("eos", "length") for r in rows)
    assert len({r["response"] for r in rows[:3]}) > 1, "three samples of one prompt should differ"
    for line, row in enumerate(rows, 1):
        if row["response"].strip():
            assert parse_response(row, "a.jsonl", line).sample_id == str(row["sample_id"])
