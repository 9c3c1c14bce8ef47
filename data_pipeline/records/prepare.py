"""Builds tokenized shards from a pair file when they are missing or stale (what `rpo-jax train` needs first).

A shard folder is reused only if it has this code's schema version and its manifest fingerprint equals the
fingerprint of the current pair file, tokenizer files, chat template and truncation settings; otherwise it is
rebuilt (atomically, replacing it).
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.errors import DataFileError
from data_pipeline.records.build import SourceFingerprint, build_shards
from data_pipeline.records.shards import (
    ShardFormatError,
    read_manifest,
)
from data_pipeline.records.tokenize import load_tokenizer, resolve_chat_template
from data_pipeline.records.truncation import TruncationSettings


def ensure_shards(
    pairs_path: str | Path,
    tokenizer_dir: str | Path,
    output_dir: str | Path,
    settings: TruncationSettings,
    *,
    setting: str = "data.pairs_path",
) -> tuple[dict, bool]:
    """Returns (manifest, rebuilt). `setting` names the pair file in errors (data.pairs_path, data.eval_pairs_path)."""
    pairs_path, output_dir = Path(pairs_path), Path(output_dir)
    if not pairs_path.is_file():
        raise DataFileError(f"{setting}={pairs_path}: no such file")
    chat_template, _ = resolve_chat_template(load_tokenizer(tokenizer_dir), None)
    expected = SourceFingerprint.of(pairs_path, tokenizer_dir, chat_template, settings).fingerprint
    if (output_dir / "manifest.json").is_file():
        try:
            manifest = read_manifest(output_dir)
        except ShardFormatError:  # written by another schema version: stale, rebuilt below
            manifest = None
        if manifest is not None and manifest["fingerprint"] == expected:
            return manifest, False
    manifest = build_shards(pairs_path, tokenizer_dir, output_dir, settings, overwrite=True)
    return manifest, True
