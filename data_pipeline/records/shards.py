"""Tokenized pairs on disk: ArrayRecord shards of `tf.train.Example` records + `manifest.json`, a TFDS folder.

Each record is one example encoded as TFDS encodes it (`pair_example`: token rows, row lengths, response starts,
margin, example index, recipe), and the folder carries TFDS's metadata (`tfds_folder`), so TFDS reads it as the
split `train`. Examples are stored in example-index order and the shards split that order contiguously, so the
global record index (shards concatenated, as Grain's ArrayRecordDataSource reads them) equals the example index.

Beside the shards, `row_lengths.npy` ([N, G] int32, row i = example index i) lets a loader size a batch it has
not read (every process pads to the same length bucket without reading the other processes' rows).

A shard folder is created complete or not at all: everything is written to a temporary sibling folder that is
renamed into place. `ref_logps.npz` ([N, G] float32 + its key) is likewise written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataFileError, OutputExistsError, UserError
from data_pipeline.files import file_sha256
from data_pipeline.records.pair_example import ShardFormatError, example_features, pair_features
from data_pipeline.records.shard_stats import ShardStats
from data_pipeline.records.tfds_folder import (
    DATASET_NAME,
    SPLIT,
    manifest_from_tfds_folder,
    scan_records,
    shard_file_name,
    write_tfds_metadata,
)
from data_pipeline.records.tokenize import TokenizedExample
from data_pipeline.storage import storage_path

# 2: manifest lists `mirror_pairs`; 3: row_lengths.npy; 4: tf.train.Example records in a TFDS folder
SCHEMA_VERSION = 4
FORMAT_NAME = "rpo-jax-tokenized-pairs"
MANIFEST_NAME = "manifest.json"
ROW_LENGTHS_NAME = "row_lengths.npy"
TFDS_INFO_NAME = "dataset_info.json"
# random access by Grain: one record per chunk group (array_record's recommendation for random reads).
_WRITER_OPTIONS = "group_size:1"
# Files of a tokenizer folder that affect tokenization (README/LICENSE edits must not change the fingerprint).
_TOKENIZER_SUFFIXES = (".model", ".json", ".txt", ".jinja", ".tiktoken")


def tokenizer_file_hashes(tokenizer_dir: str | Path) -> dict[str, str]:
    root = Path(tokenizer_dir)
    return {
        p.name: file_sha256(p) for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(_TOKENIZER_SUFFIXES)
    }


def compute_fingerprint(input_sha256: str, tokenizer_hashes: dict[str, str], chat_template: str, settings: dict) -> str:
    """sha256 over the pair data, tokenizer files, chat template text, settings and schema version."""
    payload = json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "input": input_sha256,
            "tokenizer": tokenizer_hashes,
            "chat_template": hashlib.sha256(chat_template.encode()).hexdigest(),
            "settings": settings,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ShardWriter:
    """Streams examples into a staging file, then splits it into `num_shards` shards and publishes atomically.

    Use as a context manager; `finish(manifest)` publishes, leaving the `with` block without it removes everything.
    """

    def __init__(self, output_dir: str | Path, num_shards: int = 1, overwrite: bool = False):
        from array_record.python.array_record_module import ArrayRecordWriter

        if num_shards < 1:
            raise UserError(f"--num-shards must be >= 1, got {num_shards}")
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not overwrite:
            raise OutputExistsError(f"{self.output_dir} already exists; remove it or pass --overwrite")
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.num_shards, self.overwrite = num_shards, overwrite
        self._tmp: Path | None = Path(
            tempfile.mkdtemp(prefix=f".{self.output_dir.name}.tmp-", dir=self.output_dir.parent)
        )
        self._staging_path = self._tmp / "staging.array_record"
        self._writer = ArrayRecordWriter(str(self._staging_path), _WRITER_OPTIONS)
        self.stats = ShardStats()
        self._features = None  # the TFDS FeaturesDict, made for the first example's group size

    @property
    def num_examples(self) -> int:
        return self.stats.num_examples

    @property
    def group_size(self) -> int | None:
        return self.stats.group_size

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:  # not published: leave nothing behind
            shutil.rmtree(self._tmp, ignore_errors=True)

    def add(self, example: TokenizedExample) -> int:
        """Appends the example; returns its example index."""
        if self._features is None:
            self._features = pair_features(len(example.rows))
        index = self.stats.add(example.rows, example.response_starts)
        self._writer.write(self._features.serialize_example(example_features(index, example)))
        return index

    def finish(self, manifest: dict) -> dict:
        """Writes shards, TFDS metadata and manifest (adding format fields and the shard list) and renames the
        folder into place."""
        from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

        self._writer.close()
        self._writer = None
        shard_sizes = [len(part) for part in np.array_split(np.arange(self.num_examples), self.num_shards)]
        reader = ArrayRecordReader(str(self._staging_path))
        shards, start = [], 0
        for index, size in enumerate(shard_sizes):
            name = shard_file_name(index, self.num_shards)
            writer = ArrayRecordWriter(str(self._tmp / name), _WRITER_OPTIONS)
            for chunk_start in range(start, start + size, 1024):
                for record in reader.read(chunk_start, min(chunk_start + 1024, start + size)):
                    writer.write(record)
            writer.close()
            shards.append({"path": name, "num_records": size, "first_example_index": start})
            start += size
        reader.close()
        self._staging_path.unlink()
        np.save(self._tmp / ROW_LENGTHS_NAME, self.stats.row_lengths_array(), allow_pickle=False)
        write_tfds_metadata(self._tmp, self.group_size, shard_sizes, manifest)
        full = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            **manifest,
            **self.stats.manifest_fields(manifest.get("max_length")),
            "row_lengths": ROW_LENGTHS_NAME,
            "tfds": {"name": DATASET_NAME, "split": SPLIT},
            "shards": shards,
        }
        _write_json_atomic(self._tmp / MANIFEST_NAME, full)
        self._publish()
        return full

    def _publish(self) -> None:
        old = None
        if self.output_dir.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.output_dir} appeared while writing; not replacing it")
            old = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.old-", dir=self.output_dir.parent))
            os.rename(self.output_dir, old / "data")
        os.rename(self._tmp, self.output_dir)
        self._tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_shard_folder(path: str | Path) -> bool:
    """Whether `read_manifest` has something to read there: our manifest.json, or TFDS's dataset_info.json."""
    folder = storage_path(path)  # gs:// too: `rpo-jax tokenize` uploads manifest.json last
    return (folder / MANIFEST_NAME).is_file() or (folder / TFDS_INFO_NAME).is_file()


def read_manifest(shard_dir: str | Path) -> dict:
    """The folder's manifest.json, or for a TFDS folder made elsewhere (no manifest.json) one built from its TFDS
    metadata and records (`tfds_folder`)."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        if (Path(shard_dir) / TFDS_INFO_NAME).is_file():
            return {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, **manifest_from_tfds_folder(shard_dir)}
        raise DataFileError(
            f"{path}: no manifest; is {shard_dir} a folder written by `rpo-jax tokenize` (or a TFDS folder with "
            "dataset_info.json)?"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardFormatError(
            f"{path}: format {manifest.get('format')!r} version "
            f"{manifest.get('schema_version')!r}; this code reads {FORMAT_NAME!r} version "
            f"{SCHEMA_VERSION}; re-run `rpo-jax tokenize`"
        )
    for name in [shard["path"] for shard in manifest["shards"]] + [manifest["row_lengths"]]:
        if not (Path(shard_dir) / name).is_file():
            raise DataFileError(f"{path}: {name} is missing")
    return manifest


def read_row_lengths(shard_dir: str | Path, manifest: dict) -> np.ndarray:
    """[num_examples, group_size] int32: the token count of every row, by example index (read from the records
    of a TFDS folder made elsewhere, which has no row_lengths.npy)."""
    if manifest["row_lengths"] is None:
        return scan_records(shard_dir, manifest, manifest["group_size"]).row_lengths_array()
    lengths = np.load(Path(shard_dir) / manifest["row_lengths"], allow_pickle=False)
    if lengths.shape != (manifest["num_examples"], manifest["group_size"]):
        raise ShardFormatError(
            f"{shard_dir}: {manifest['row_lengths']} has shape {lengths.shape}, the manifest says "
            f"({manifest['num_examples']}, {manifest['group_size']})"
        )
    return lengths
