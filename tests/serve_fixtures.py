"""A tiny HF Llama folder whose greedy answer to any chat is a text chosen by the test (`scripted_llama`).

The weights are written so that the network is a token -> next-token table: every attention and MLP output
projection is zero, so the residual stream at a position is that position's token embedding; embeddings are
one-hot; the LM head maps the one-hot of token a to a large logit on token b. Greedy decoding then follows the
chain (last prompt token -> answer tokens -> EOS) whatever the prompt is. The model still runs the whole
stack: the tokenizer's chat template, the Llama forward, the KV-cache sampler, EOS stopping and detokenization.
The tokenizer is the repo's 32k SentencePiece one with the repo's Llama-3 chat template.

`shared_judge` loads one such model into one serving engine for every serve test of a session, so its decode
programs compile once; each test module starts its own server (its own limits) on it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from pathlib import Path

import numpy as np

from rpo_jax.config.schema import ModelConfig
from rpo_jax.io.hf_config import model_config_to_hf
from rpo_jax.io.hf_table import hf_tensor_names

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "data_pipeline" / "assets" / "tokenizers" / "llama2-sp-32k"
CHAT_TEMPLATE = REPO / "data_pipeline" / "assets" / "chat_templates" / "llama3.jinja"
LOGIT = 10.0
JUDGE_ANSWER = '{"judgements": [true]}'  # 8 tokens, each once: what the judge model says to any chat


def _tokenizer_with_template(path: Path):
    from transformers import AutoTokenizer

    shutil.copytree(TOKENIZER, path, dirs_exist_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE.read_text()
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(str(path))


def scripted_llama(path: Path, answer: str) -> Path:
    """An HF folder (weights, config, tokenizer with chat template) whose greedy reply is always `answer`."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer_with_template(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    chain = [prompt[-1], *tokenizer.encode(answer, add_special_tokens=False), tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), f"a token repeats in {answer!r}; a next-token table cannot say it"
    cfg = ModelConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    assert len(chain) <= cfg.hidden_size
    rng = np.random.default_rng(0)
    tensors = {}
    for name, t, _ in hf_tensor_names(cfg):
        shape = t.hf_shape(cfg)
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            tensors[name] = np.zeros(shape, np.float32)  # attention and MLP add nothing to the residual
        else:
            tensors[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    embed = np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
    head = np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
    for slot, (token, next_token) in enumerate(zip(chain, chain[1:])):
        embed[token, slot] = 1.0
        head[next_token, slot] = LOGIT
    tensors["model.embed_tokens.weight"], tensors["lm_head.weight"] = embed, head
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(model_config_to_hf(cfg, "float32")))
    return path


def judge_settings(folder: Path, **limits):
    """The serve settings of the shared judge: port 0, model name "judge", max_tokens 32 by default."""
    from rpo_jax.generate.serving import ServeSettings

    return ServeSettings(model=str(folder), port=0, model_name="judge", default_max_tokens=32, **limits)


@functools.cache
def shared_judge(session_temp: Path) -> tuple[Path, object]:
    """(model folder, `ChatEngine`) of the scripted judge, built once per session (8 CPU devices, fsdp over all)
    under `session_temp` (`tmp_path_factory.getbasetemp()`)."""
    from rpo_jax.config.schema import MeshConfig
    from rpo_jax.generate.serving import ChatEngine

    folder = scripted_llama(session_temp / "shared-judge", JUDGE_ANSWER)
    return folder, ChatEngine(judge_settings(folder), MeshConfig(data=1, fsdp=-1, tensor=1))


@contextlib.contextmanager
def counted_compiles():
    """A list that receives the name of every XLA program compiled in the block, on any thread."""
    import jax

    compiled: list[str] = []

    def note(event: str, duration_secs: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(note)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(note)
