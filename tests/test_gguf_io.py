"""GGUF -> HF conversion on a tiny GGUF written here with `gguf.GGUFWriter` the way llama.cpp's converter does."""

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from rpo_jax.io.gguf import GGUFError, gguf_to_hf, unpermute_qk  # noqa: E402

Y, D, H, K, Dh, F, V = 2, 32, 4, 2, 8, 48, 64


def llama_cpp_permute(weights, n_head, n_head_kv):
    """Copied from llama.cpp convert_hf_to_gguf.py (LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.default_rng(0).normal(size=(K * Dh, D)).astype(np.float32)
    permuted = llama_cpp_permute(w, H, K)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_qk(permuted, K), w)


def _hf_weights(rng):
    w = {
        "model.embed_tokens.weight": rng.normal(size=(V, D)),
        "model.norm.weight": rng.normal(size=(D,)),
        "lm_head.weight": rng.normal(size=(V, D)),
    }
    shapes = {
        "self_attn.q_proj": (H * Dh, D),
        "self_attn.k_proj": (K * Dh, D),
        "self_attn.v_proj": (K * Dh, D),
        "self_attn.o_proj": (D, H * Dh),
        "mlp.gate_proj": (F, D),
        "mlp.up_proj": (F, D),
        "mlp.down_proj": (D, F),
        "input_layernorm": (D,),
        "post_attention_layernorm": (D,),
    }
    for i in range(Y):
        for name, shape in shapes.items():
            w[f"model.layers.{i}.{name}.weight"] = rng.normal(size=shape)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _write_gguf(path, hf, arch="llama"):
    """As llama.cpp's converter: HF names -> GGUF names, q/k permuted, llama.* metadata."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_embedding_length(D)
    writer.add_block_count(Y)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(K)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(V)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    writer.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", hf["model.norm.weight"])
    writer.add_tensor("output.weight", hf["lm_head.weight"])
    for i in range(Y):
        for hf_name, g_name in names.items():
            w = hf[f"model.layers.{i}.{hf_name}.weight"]
            if g_name == "attn_q":
                w = llama_cpp_permute(w, H, H)
            elif g_name == "attn_k":
                w = llama_cpp_permute(w, H, K)
            writer.add_tensor(f"blk.{i}.{g_name}.weight", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_to_hf_recovers_hf_weights_and_config(tmp_path):
    from safetensors.numpy import load_file

    hf = _hf_weights(np.random.default_rng(1))
    _write_gguf(tmp_path / "tiny.gguf", hf)
    out = gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(hf)
    for name, want in hf.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    ) == (D, Y, H, K, Dh, F, V)
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 50000.0}
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["tie_word_embeddings"] is False
    assert cfg["max_position_embeddings"] == 256


def test_rejects_other_architectures_and_existing_output(tmp_path):
    hf = _hf_weights(np.random.default_rng(2))
    _write_gguf(tmp_path / "qwen.gguf", hf, arch="qwen2")
    with pytest.raises(GGUFError, match="qwen2"):
        gguf_to_hf(tmp_path / "qwen.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        gguf_to_hf(tmp_path / "qwen.gguf", tmp_path / "taken")


def test_import_gguf_command_writes_a_checkpoint_equal_to_the_hf_weights(tmp_path):
    import jax
    from flax import nnx

    from rpo_jax.cli import main
    from rpo_jax.config.schema import MeshConfig
    from rpo_jax.io.params import read_model_config, restore_params
    from rpo_jax.model.llama import Llama
    from rpo_jax.runtime.sharding import make_mesh, state_shardings

    hf = _hf_weights(np.random.default_rng(3))
    _write_gguf(tmp_path / "tiny.gguf", hf)
    assert (
        main(
            [
                "import-gguf",
                "--gguf",
                str(tmp_path / "tiny.gguf"),
                "--output",
                str(tmp_path / "ckpt"),
                "--mesh",
                "data=1,fsdp=-1,tensor=1",
            ]
        )
        == 0
    )
    cfg = read_model_config(tmp_path / "ckpt")
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (D, K, Dh)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    abstract = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))[1]
    state = restore_params(tmp_path / "ckpt", abstract, state_shardings(abstract, mesh)).to_pure_dict()
    # Our layout: wq [Y, D, H, Dh] is the HF q_proj [H*Dh, D] transposed, per layer.
    np.testing.assert_array_equal(
        np.asarray(state["layers"]["wq_DHDh"][1]), hf["model.layers.1.self_attn.q_proj.weight"].T.reshape(D, H, Dh)
    )
    np.testing.assert_array_equal(np.asarray(state["lm_head_DV"]), hf["lm_head.weight"].T)
