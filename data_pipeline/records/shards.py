"""Tokenized pairs on disk: ArrayRecord shards + `manifest.json`.

Record layout (little-endian, no pickle): header `<4sBBhiq` = magic b"RPJ1", group size G, recipe code, reserved,
margin (int32), example index (int64); then G int32 row lengths, G int32 response starts, then the rows' int32 token
ids back to back. Examples are stored in example-index order and the shards split that order contiguously, so the
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
import struct
import tempfile
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataFileError, OutputExistsError, UserError
from data_pipeline.files import file_sha256
from data_pipeline.records.packing import efficiency_summary, packed_length
from data_pipeline.records.tokenize import TokenizedExample

SCHEMA_VERSION = 3  # 2: manifest lists `mirror_pairs`; 3: row_lengths.npy
FORMAT_NAME = "rpo-jax-tokenized-pairs"
MANIFEST_NAME = "manifest.json"
ROW_LENGTHS_NAME = "row_lengths.npy"
RECORD_MAGIC = b"RPJ1"
RECIPE_CODES = {"dpo": 0, "rpo": 1, "iopo": 2}
RECIPE_NAMES = {code: name for name, code in RECIPE_CODES.items()}
_HEADER = struct.Struct("<4sBBhiq")
# random access by Grain: one record per chunk group (array_record's recommendation for random reads).
_WRITER_OPTIONS = "group_size:1"
# Files of a tokenizer folder that affect tokenization (README/LICENSE edits must not change the fingerprint).
_TOKENIZER_SUFFIXES = (".model", ".json", ".txt", ".jinja", ".tiktoken")


class ShardFormatError(UserError, ValueError):
    """A shard folder or record that does not match this schema version."""


def encode_record(example_index: int, example: TokenizedExample) -> bytes:
    group = len(example.rows)
    header = _HEADER.pack(RECORD_MAGIC, group, RECIPE_CODES[example.recipe], 0, example.margin, example_index)
    lengths = np.asarray([len(r) for r in example.rows], dtype="<i4")
    starts = np.asarray(example.response_starts, dtype="<i4")
    tokens = np.concatenate(example.rows).astype("<i4", copy=False)
    return header + lengths.tobytes() + starts.tobytes() + tokens.tobytes()


def decode_record(data: bytes) -> dict:
    """{'rows': G int32 arrays, 'response_starts': int32[G], 'margin', 'example_index', 'recipe'}."""
    if len(data) < _HEADER.size or data[:4] != RECORD_MAGIC:
        raise ShardFormatError(f"record does not start with {RECORD_MAGIC!r} (schema version {SCHEMA_VERSION})")
    _, group, recipe_code, _, margin, example_index = _HEADER.unpack_from(data)
    meta = np.frombuffer(data, dtype="<i4", count=2 * group, offset=_HEADER.size)
    lengths, starts = meta[:group], meta[group:]
    tokens = np.frombuffer(data, dtype="<i4", offset=_HEADER.size + 8 * group)
    if tokens.size != int(lengths.sum()):
        raise ShardFormatError(f"record {example_index}: {tokens.size} tokens, header says {int(lengths.sum())}")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    rows = [tokens[bounds[g] : bounds[g + 1]].astype(np.int32) for g in range(group)]
    return {
        "rows": rows,
        "response_starts": starts.astype(np.int32),
        "margin": int(margin),
        "example_index": int(example_index),
        "recipe": RECIPE_NAMES[recipe_code],
    }


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
        self.num_examples = 0
        self.group_size: int | None = None
        self.max_row_length = 0
        self.row_lengths: list[int] = []
        self.packed_lengths: dict[str, list[int]] = {"packed": [], "packed_shared_prompt": []}
        self._by_responses: dict[bytes, list[int]] = {}  # G=2: sorted response token ids -> example indices

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
        if self.group_size is None:
            self.group_size = len(example.rows)
        elif len(example.rows) != self.group_size:
            raise ValueError(f"group size {len(example.rows)} differs from the shard's {self.group_size}")
        self._writer.write(encode_record(self.num_examples, example))
        self.row_lengths.extend(len(r) for r in example.rows)
        record = {"rows": example.rows, "response_starts": example.response_starts}
        self.packed_lengths["packed"].append(packed_length(record, shared_prompt=False))
        self.packed_lengths["packed_shared_prompt"].append(packed_length(record, shared_prompt=True))
        self.max_row_length = max(self.max_row_length, *(len(r) for r in example.rows))
        if self.group_size == 2:
            responses = sorted(
                np.asarray(row[start:], dtype="<i4").tobytes()
                for row, start in zip(example.rows, example.response_starts, strict=True)
            )
            self._by_responses.setdefault(b"\xff".join(responses), []).append(self.num_examples)
        self.num_examples += 1
        return self.num_examples - 1

    def mirror_pairs(self) -> list[list[int]]:
        """Pairs of examples holding the same two responses in swapped roles: an RPO pair (x_Si; y_i > y_j) and its
        mirror (x_Sj; y_j > y_i). Examples sharing both responses are paired in order of appearance."""
        pairs = []
        for indices in self._by_responses.values():
            pairs.extend([indices[k], indices[k + 1]] for k in range(0, len(indices) - 1, 2))
        return sorted(pairs)

    def finish(self, manifest: dict) -> dict:
        """Writes shards + manifest (adding format fields and the shard list) and renames the folder into place."""
        from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

        self._writer.close()
        self._writer = None
        shard_sizes = [len(part) for part in np.array_split(np.arange(self.num_examples), self.num_shards)]
        reader = ArrayRecordReader(str(self._staging_path))
        shards, start = [], 0
        for index, size in enumerate(shard_sizes):
            name = f"pairs-{index:05d}-of-{self.num_shards:05d}.array_record"
            writer = ArrayRecordWriter(str(self._tmp / name), _WRITER_OPTIONS)
            for chunk_start in range(start, start + size, 1024):
                for record in reader.read(chunk_start, min(chunk_start + 1024, start + size)):
                    writer.write(record)
            writer.close()
            shards.append({"path": name, "num_records": size, "first_example_index": start})
            start += size
        reader.close()
        self._staging_path.unlink()
        lengths = np.asarray(self.row_lengths or [0])
        row_lengths = np.asarray(self.row_lengths, dtype=np.int32).reshape(self.num_examples, self.group_size or 0)
        np.save(self._tmp / ROW_LENGTHS_NAME, row_lengths, allow_pickle=False)
        full = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            **manifest,
            "num_examples": self.num_examples,
            "group_size": self.group_size,
            "max_row_length": int(self.max_row_length),
            "row_length_percentiles": {str(q): int(np.percentile(lengths, q)) for q in (50, 90, 99, 100)},
            "mirror_pairs": self.mirror_pairs(),
            "row_lengths": ROW_LENGTHS_NAME,
            "packing": efficiency_summary(
                len(self.row_lengths),
                int(sum(self.row_lengths)),
                self.packed_lengths,
                manifest.get("max_length") or max(self.max_row_length, 1),
                self.group_size or 1,
            ),
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


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataFileError(f"{path}: no manifest; is {shard_dir} a folder written by `rpo-jax tokenize`?")
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
    """[num_examples, group_size] int32: the token count of every row, by example index."""
    lengths = np.load(Path(shard_dir) / manifest["row_lengths"], allow_pickle=False)
    if lengths.shape != (manifest["num_examples"], manifest["group_size"]):
        raise ShardFormatError(
            f"{shard_dir}: {manifest['row_lengths']} has shape {lengths.shape}, the manifest says "
            f"({manifest['num_examples']}, {manifest['group_size']})"
        )
    return lengths


def shard_paths(shard_dir: str | Path, manifest: dict) -> list[str]:
    return [str(Path(shard_dir) / shard["path"]) for shard in manifest["shards"]]
