"""HF import/export against real `transformers.LlamaForCausalLM` (torch, fp32) on tiny random models."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from llama_hf_fixtures import one_device_mesh, save_torch_llama, tiny_config, torch_logits, write_numpy_llama

from rpo_jax import cli
from rpo_jax.cli import main
from rpo_jax.config.schema import LoraConfig, MeshConfig
from rpo_jax.io.hf import HFWeightsError, load_hf_state, read_hf_config
from rpo_jax.io.hf_config import HFConfigError, model_config_from_hf, model_config_to_hf
from rpo_jax.io.params import read_model_config, save_params
from rpo_jax.model.llama import Llama
from rpo_jax.runtime.sharding import make_mesh

L = 12


def _tokens(cfg, batch=2, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, L))


def _our_logits(cfg, state, tokens):
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))), state)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(model(tokens, positions))


# Pairwise coverage of (GQA, tied, llama3 rope, scan, remat): every pair of values appears in some row.
PARITY_CASES = [
    dict(gqa=True, tied=False, llama3_rope=True, scan_layers=True, remat_policy="none"),
    dict(gqa=False, tied=True, llama3_rope=False, scan_layers=True, remat_policy="full"),
    dict(gqa=True, tied=True, llama3_rope=True, scan_layers=False, remat_policy="minimal"),
    dict(gqa=False, tied=False, llama3_rope=False, scan_layers=False, remat_policy="none"),
    dict(gqa=False, tied=False, llama3_rope=True, scan_layers=True, remat_policy="full"),
]


@pytest.mark.torch
@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_logits_match_transformers(tmp_path, case):
    cfg = tiny_config(**case)
    hf_model = save_torch_llama(cfg, tmp_path)
    loaded_cfg, state = load_hf_state(
        tmp_path, one_device_mesh(), scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy
    )
    assert loaded_cfg == cfg
    tokens = _tokens(cfg)
    np.testing.assert_allclose(
        _our_logits(loaded_cfg, state, tokens), torch_logits(hf_model, tokens), atol=1e-5, rtol=0
    )


@pytest.mark.torch
@pytest.mark.parametrize("hf_shard_size, export_shard_size", [(None, "5GB"), ("20KB", "30000")])
def test_cli_round_trip_reproduces_transformers_model(tmp_path, hf_shard_size, export_shard_size):
    import torch
    from transformers import LlamaForCausalLM

    cfg = tiny_config(llama3_rope=True)
    hf_model = save_torch_llama(cfg, tmp_path / "hf", max_shard_size=hf_shard_size)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() == (hf_shard_size is not None)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (tmp_path / "tok" / "generation_config.json").write_text('{"eos_token_id": [2, 5]}')
    assert (
        cli.main(
            [
                "import-hf",
                "--model",
                str(tmp_path / "hf"),
                "--output",
                str(tmp_path / "ckpt"),
                "--mesh",
                "fsdp=4,tensor=2",
            ]
        )
        == 0
    )
    assert read_model_config(tmp_path / "ckpt") == cfg
    assert (
        cli.main(
            [
                "export-hf",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--output",
                str(tmp_path / "out"),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--max-shard-size",
                export_shard_size,
                "--mesh",
                "data=4,fsdp=2",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (out / "model.safetensors.index.json").exists() == (export_shard_size != "5GB")
    assert json.loads((out / "generation_config.json").read_text()) == {"eos_token_id": [2, 5]}
    assert (out / "tokenizer_config.json").exists()
    reloaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    original, again = hf_model.state_dict(), reloaded.state_dict()
    assert set(original) == set(again)
    for name in original:
        assert torch.equal(original[name], again[name]), name
    tokens = _tokens(cfg)
    np.testing.assert_array_equal(torch_logits(reloaded, tokens), torch_logits(hf_model, tokens))


@pytest.mark.torch
def test_import_on_8_device_mesh_matches_one_device_and_is_sharded(tmp_path):
    cfg = tiny_config(gqa=True)
    save_torch_llama(cfg, tmp_path)
    _, state_1 = load_hf_state(tmp_path, one_device_mesh())
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    _, state_8 = load_hf_state(tmp_path, mesh)
    specs = jax.tree.map(lambda x: x.sharding.spec, nnx.to_pure_dict(state_8))
    assert specs["embed_VD"] == P("tensor", "fsdp")
    assert specs["lm_head_DV"] == P("fsdp", "tensor")
    assert specs["layers"]["wq_DHDh"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["wk_DKDh"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["wo_HDhD"] == P(None, "tensor", None, "fsdp")
    assert specs["layers"]["w_down_FD"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["input_norm_D"] == P(None, None)
    wq = nnx.to_pure_dict(state_8)["layers"]["wq_DHDh"]
    assert wq.addressable_shards[0].data.shape == (2, 32 // 4, 4 // 2, 16)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state_1), nnx.to_pure_dict(state_8))
    tokens = _tokens(cfg)
    np.testing.assert_allclose(_our_logits(cfg, state_8, tokens), _our_logits(cfg, state_1, tokens), atol=1e-6)


@pytest.mark.torch
def test_exported_lora_merge_matches_adapted_model(tmp_path):
    import torch
    from transformers import LlamaForCausalLM

    cfg = tiny_config(gqa=True, tied=True)
    lora = LoraConfig(rank=2, alpha=4.0)
    model = Llama(cfg, lora, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    for name in model.layers.lora_names:
        b = getattr(model.layers, f"lora_b_{name}")
        b[...] = jax.numpy.asarray(0.05 * rng.standard_normal(b.shape), b.dtype)
    tokens = _tokens(cfg)
    positions = np.broadcast_to(np.arange(L), tokens.shape)
    adapted, base = np.asarray(model(tokens, positions)), np.asarray(model(tokens, positions, use_lora=False))
    assert np.abs(adapted - base).max() > 1e-3  # the adapters really change the output
    save_params(tmp_path / "ckpt", nnx.state(model), cfg, lora)
    assert (
        main(
            [
                "export-hf",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--output",
                str(tmp_path / "out"),
                "--max-shard-size",
                "1GB",
                "--mesh",
                "data=8,fsdp=1",
            ]
        )
        == 0
    )
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(reloaded, tokens), adapted, atol=1e-5, rtol=0)


def test_bfloat16_import_and_export_dtype(tmp_path):
    cfg = tiny_config()
    write_numpy_llama(cfg, tmp_path / "hf")
    loaded_cfg, state = load_hf_state(tmp_path / "hf", one_device_mesh(), param_dtype="bfloat16")
    assert loaded_cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(nnx.to_pure_dict(state)))
    from rpo_jax.io.hf_export import export_hf

    export_hf(state, loaded_cfg, LoraConfig(), tmp_path / "out")
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", framework="numpy") as f:
        got = f.get_tensor("model.layers.1.self_attn.o_proj.weight")
    with safe_open(tmp_path / "hf" / "model.safetensors", framework="numpy") as f:
        want = f.get_tensor("model.layers.1.self_attn.o_proj.weight").astype(got.dtype)
    assert str(got.dtype) == "bfloat16"
    np.testing.assert_array_equal(got, want)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"sliding_window": 4096}, "sliding_window"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"num_local_experts": 8}, "num_local_experts"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ],
)
def test_unsupported_architecture_names_file_and_field(tmp_path, changes, field):
    write_numpy_llama(tiny_config(), tmp_path, config_changes=changes)
    with pytest.raises(HFConfigError, match=rf"config\.json: .*{field}"):
        load_hf_state(tmp_path, one_device_mesh())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(drop="model.layers.1.mlp.up_proj.weight"),
            r"model\.safetensors: missing tensor model\.layers\.1\.mlp\.up_proj",
        ),
        (dict(extra="model.layers.0.self_attn.q_proj.bias"), r"model\.safetensors: unexpected tensor .*q_proj\.bias"),
        (
            dict(reshape="model.layers.0.self_attn.k_proj.weight"),
            r"model\.safetensors: tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \(33, 32\)",
        ),
    ],
)
def test_bad_weights_name_file_and_tensor(tmp_path, kwargs, message):
    write_numpy_llama(tiny_config(), tmp_path, **kwargs)
    with pytest.raises(HFWeightsError, match=message):
        load_hf_state(tmp_path, one_device_mesh())


def test_pickle_weights_are_refused(tmp_path):
    write_numpy_llama(tiny_config(), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(HFWeightsError, match=r"pytorch_model\.bin.*never loaded"):
        load_hf_state(tmp_path, one_device_mesh())


def test_index_pointing_at_pickle_is_refused(tmp_path):
    write_numpy_llama(tiny_config(), tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "pytorch_model-00001-of-00002.bin"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFWeightsError, match=r"index\.json: tensor model\.embed_tokens\.weight .*\.bin"):
        load_hf_state(tmp_path, one_device_mesh())


def test_tied_lm_head_accepted_only_when_equal(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = tiny_config(tied=True)
    write_numpy_llama(cfg, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    load_hf_state(tmp_path, one_device_mesh())
    tensors["lm_head.weight"][3, 1] += 1.0
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(HFWeightsError, match=r"lm_head\.weight differs"):
        load_hf_state(tmp_path, one_device_mesh())


def test_legacy_rope_fields_and_config_round_trip():
    cfg = tiny_config(llama3_rope=True, tied=True)
    raw = model_config_to_hf(cfg)
    assert model_config_from_hf(raw) == cfg
    legacy = {k: v for k, v in raw.items() if k != "rope_parameters"}
    rope = dict(raw["rope_parameters"])
    legacy["rope_theta"] = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")  # the HF v4 spelling
    legacy["rope_scaling"] = rope
    assert model_config_from_hf(legacy) == cfg
    default_legacy = {**legacy, "rope_scaling": None, "rope_theta": 500000.0}
    assert model_config_from_hf(default_legacy).rope_parameters.rope_theta == 500000.0
    assert model_config_from_hf(default_legacy).rope_parameters.rope_type == "default"
    with pytest.raises(HFConfigError, match=r"my/config\.json: required field hidden_size"):
        model_config_from_hf({k: v for k, v in raw.items() if k != "hidden_size"}, "my/config.json")


def test_malformed_config_json_names_file_line_and_column(tmp_path):
    write_numpy_llama(tiny_config(), tmp_path)
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size" 32\n}\n')
    with pytest.raises(HFConfigError, match=re.escape(f"{tmp_path / 'config.json'}:3: malformed JSON at column 17: ")):
        read_hf_config(tmp_path)


def test_export_of_a_missing_step_names_the_folder_and_the_steps_there(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        for item in ("state", "meta"):  # what makes a folder a step checkpoint
            (checkpoints / str(step) / item).mkdir(parents=True)
    missing = checkpoints / "5"
    assert main(["export-hf", "--checkpoint", str(missing), "--output", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err == f"rpo-jax export-hf: error: {missing}: no such checkpoint folder (the steps in {checkpoints}: 2, 4)\n"
    assert not (tmp_path / "hf").exists()
