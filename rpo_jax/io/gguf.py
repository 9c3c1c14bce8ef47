"""GGUF (llama.cpp) Llama file → HuggingFace Llama folder (config.json, model.safetensors, tokenizer).

Quantized tensors are dequantized to fp32 with the `gguf` package. llama.cpp's converter stores the q/k
projection rows permuted for its interleaved RoPE; `unpermute_qk` undoes that so the weights match HF's
rotate-half layout. Only the `llama` architecture is supported; anything else raises.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataFileError, OutputExistsError, UserError

log = logging.getLogger(__name__)

# GGUF tensor name (per block unless marked) -> HF parameter name.
_BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
    "attn_norm": "input_layernorm.weight",
    "ffn_norm": "post_attention_layernorm.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(UserError, ValueError):
    """The GGUF file is not a Llama model this converter understands."""


def unpermute_qk(weight_OI: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp `convert_hf_to_gguf.py` `permute`: rows per head go from (Dh/2, 2) back to (2, Dh/2)."""
    out_dim = weight_OI.shape[0]
    half = out_dim // n_head // 2
    return weight_OI.reshape(n_head, half, 2, *weight_OI.shape[1:]).swapaxes(1, 2).reshape(weight_OI.shape)


def _field(reader, key: str, path: Path, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise GGUFError(f"{path}: missing metadata key {key!r}")
    return field.contents()


def read_llama_config(reader, path: Path) -> dict:
    """HF LlamaConfig dict from the GGUF `llama.*` / `tokenizer.ggml.*` metadata."""
    arch = _field(reader, "general.architecture", path)
    if arch != "llama":
        raise GGUFError(f"{path}: general.architecture is {arch!r}; only 'llama' is supported")
    hidden = int(_field(reader, "llama.embedding_length", path))
    heads = int(_field(reader, "llama.attention.head_count", path))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", path, default=heads))
    head_dim = int(_field(reader, "llama.rope.dimension_count", path, default=hidden // heads))
    if head_dim * heads != hidden:
        raise GGUFError(f"{path}: head_dim {head_dim} x heads {heads} != embedding_length {hidden}")
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0
    vocab = int(_field(reader, "llama.vocab_size", path, default=n_tokens or None))
    names = {t.name for t in reader.tensors}
    if "llama.rope.scaling.type" in reader.fields:
        raise GGUFError(f"{path}: RoPE scaling metadata is not supported by this converter")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length", path)),
        "num_hidden_layers": int(_field(reader, "llama.block_count", path)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(_field(reader, "llama.context_length", path)),
        # GGUF stores eps as float32; its shortest float32 repr recovers the intended value (1e-05).
        "rms_norm_eps": float(str(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", path)))),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(_field(reader, "llama.rope.freq_base", path, default=10000.0)),
        },
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", path, default=1)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", path, default=2)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", path, default=2)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }


def dequantized_tensors(reader, config: dict, path: Path) -> dict[str, np.ndarray]:
    """All tensors as fp32 numpy arrays in HF names and [out, in] layout, q/k un-permuted."""
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        # ggml lists dims fastest-first; numpy (and HF [out, in]) order is the reverse.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        name = tensor.name
        if name in _GLOBAL_TENSORS:
            out[_GLOBAL_TENSORS[name]] = weight
            continue
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK_TENSORS or parts[3] != "weight":
            raise GGUFError(f"{path}: unexpected tensor {name!r} for a llama model")
        if parts[2] == "attn_q":
            weight = unpermute_qk(weight, config["num_attention_heads"])
        elif parts[2] == "attn_k":
            weight = unpermute_qk(weight, config["num_key_value_heads"])
        out[f"model.layers.{int(parts[1])}.{_BLOCK_TENSORS[parts[2]]}"] = np.ascontiguousarray(weight)
    expected = 9 * config["num_hidden_layers"] + 2 + (0 if config["tie_word_embeddings"] else 1)
    if len(out) != expected:
        raise GGUFError(f"{path}: found {len(out)} tensors, expected {expected} for this config")
    return out


def _save_tokenizer(gguf_path: Path, out_dir: Path, chat_template: str | None) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(out_dir))


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Writes an HF Llama folder for `gguf_path` at `out_dir` (atomically: temp folder, then rename)."""
    import gguf
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise DataFileError(f"GGUF file not found: {gguf_path}")
    if out_dir.exists():
        raise OutputExistsError(f"output folder already exists: {out_dir}")
    reader = gguf.GGUFReader(str(gguf_path))
    config = read_llama_config(reader, gguf_path)
    tensors = dequantized_tensors(reader, config, gguf_path)
    chat_template = (
        reader.fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in reader.fields else None
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        }
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if "tokenizer.ggml.model" in reader.fields:
            _save_tokenizer(gguf_path, tmp, chat_template)
        else:
            log.warning(
                "%s: no tokenizer metadata (tokenizer.ggml.model); %s gets no tokenizer files", gguf_path, out_dir
            )
        tmp.chmod(0o755)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
