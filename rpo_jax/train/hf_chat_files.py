"""The chat files of an exported HF folder: the chat template a run trained with and the generation config with
every id that ends a turn, so `tokenizer.apply_chat_template` and `rpo-jax generate` work on the run's own `hf/`
without `--raw-prompt`, and sampling stops where training taught the model to stop.

The template and ids come from the tokenized data's manifest (what training actually used; the tokenizer folder
may have no template, in which case rpo-jax's default was used). The template goes to `chat_template.jinja`
(transformers v5) and into `tokenizer_config.json` (earlier readers); generation_config.json keeps whatever the
tokenizer folder's own one sets and lists every end-of-sequence id (tokenizer EOS, end-of-turn token, the model
config's eos_token_id).
"""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.records.shards import is_shard_folder, read_manifest
from rpo_jax.config.schema import Config
from rpo_jax.train.batches import train_data_dir

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def chat_files(manifest: dict, tokenizer_dir: str | Path | None, model_eos_token_id: int) -> dict[str, bytes]:
    """{file name: content} for the export folder, from a tokenized dataset's manifest."""
    template = manifest["chat_template"]["text"]
    tokenizer = manifest["tokenizer"]
    folder = Path(tokenizer_dir) if tokenizer_dir else None
    tokenizer_config = _read_json(folder / "tokenizer_config.json") if folder else {}
    generation = _read_json(folder / "generation_config.json") if folder else {}
    own_eos = generation.get("eos_token_id")
    eos_ids = {model_eos_token_id, tokenizer["eos_token_id"], tokenizer["end_of_turn_id"]}
    eos_ids |= set(own_eos if isinstance(own_eos, list) else [] if own_eos is None else [own_eos])
    generation.update(eos_token_id=sorted(int(i) for i in eos_ids if i is not None))
    generation.setdefault("pad_token_id", manifest["pad_token_id"])
    if tokenizer["bos_token_id"] is not None:
        generation.setdefault("bos_token_id", tokenizer["bos_token_id"])
    return {
        CHAT_TEMPLATE_FILE: template.encode("utf-8"),
        "tokenizer_config.json": _json_bytes({**tokenizer_config, "chat_template": template}),
        "generation_config.json": _json_bytes(generation),
    }


def run_chat_files(cfg: Config) -> dict[str, bytes]:
    """The chat files of a run whose training data is `cfg.data.train_path` (or `data.sources`: `train_data_dir`;
    `{}` when that folder is gone, e.g. when exporting a step checkpoint of a run folder moved without its data)."""
    if not is_shard_folder(train_data_dir(cfg)):
        return {}
    manifest = read_manifest(train_data_dir(cfg))
    tokenizer_dir = cfg.data.tokenizer_path or manifest["tokenizer"]["path"]
    return chat_files(manifest, tokenizer_dir if Path(tokenizer_dir).is_dir() else None, cfg.model.eos_token_id)


def run_tokenizer_dir(cfg: Config) -> str:
    """The tokenizer a run's data was tokenized with: `data.tokenizer_path`, else the one its manifest names."""
    return cfg.data.tokenizer_path or read_manifest(train_data_dir(cfg))["tokenizer"]["path"]
