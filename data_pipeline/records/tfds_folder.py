"""Shard folders as TFDS dataset folders: the metadata TFDS reads, and TFDS folders made elsewhere read as ours.

`rpo-jax tokenize` names its shards as TFDS does (`tokenized_pairs-train.array_record-00000-of-00001`) and writes
`dataset_info.json`, `features.json` and `metadata.json` with `tfds.folder_dataset.write_metadata`, so
`tfds.builder_from_directory(dir).as_data_source(split="train")` reads the folder (no TensorFlow needed).

A folder without our `manifest.json` (written with TFDS's own API elsewhere) is read when
- it holds one split, in ArrayRecord files, stored in example-index order;
- its features are `pair_example.pair_features(G)` for some G (same names, dtypes, shapes and encodings);
- its TFDS metadata (`metadata.json`) holds `tokenization`: `max_length`, `pad_token_id`, `tokenizer` (`eos_token_id`,
  `end_of_turn_id`, `bos_token_id` or null, `path`: the tokenizer folder, read when it exists here) and
  `chat_template` (`text`): the facts training and the HF export need that no record carries.
Its manifest is then built by reading every record (row lengths, mirror pairs, packing) and hashing its files
(the fingerprint), each time it is opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data_pipeline.files import file_sha256
from data_pipeline.records.pair_example import FEATURE_NAMES, ShardFormatError, ShardRecords, pair_features
from data_pipeline.records.shard_stats import ShardStats

DATASET_NAME = "tokenized_pairs"
SPLIT = "train"
METADATA_KEY = "tokenization"
TFDS_METADATA_FILES = ("dataset_info.json", "features.json", "metadata.json")
# The `tokenization` metadata: manifest fields copied as they are (the tokenizer and chat template facts).
FACT_FIELDS = ("max_length", "pad_token_id", "tokenizer", "chat_template")
_REQUIRED_FACTS = {
    ("max_length",): int,
    ("pad_token_id",): int,
    ("tokenizer", "eos_token_id"): int,
    ("tokenizer", "end_of_turn_id"): int,
    ("tokenizer", "bos_token_id"): (int, type(None)),
    ("tokenizer", "path"): str,
    ("chat_template", "text"): str,
}
_MISSING = object()
_DESCRIPTION = (
    "Tokenized preference groups written by `rpo-jax tokenize`: each record holds G token rows (prompt + response) "
    "back to back, their lengths, where each scored response begins, the margin, the example index and the recipe."
)


def shard_file_name(index: int, count: int) -> str:
    return f"{DATASET_NAME}-{SPLIT}.array_record-{index:05d}-of-{count:05d}"


def write_tfds_metadata(folder: Path, group_size: int, shard_lengths: list[int], manifest: dict) -> None:
    """dataset_info.json, features.json and metadata.json (the manifest's `FACT_FIELDS` under `tokenization`)."""
    import tensorflow_datasets as tfds

    num_bytes = sum((folder / shard_file_name(i, len(shard_lengths))).stat().st_size for i in range(len(shard_lengths)))
    tfds.folder_dataset.write_metadata(
        data_dir=folder,
        features=pair_features(group_size),
        split_infos=[tfds.core.SplitInfo(name=SPLIT, shard_lengths=shard_lengths, num_bytes=num_bytes)],
        check_data=False,  # it would read a record through tf.data
        description=_DESCRIPTION,
        metadata=tfds.core.MetadataDict({METADATA_KEY: {field: manifest[field] for field in FACT_FIELDS}}),
    )


def manifest_from_tfds_folder(folder: str | Path) -> dict:
    """The manifest of a TFDS folder made without `rpo-jax tokenize` (see the module docstring)."""
    import tensorflow_datasets as tfds

    folder = Path(folder)
    try:
        info = tfds.builder_from_directory(str(folder)).info
    except Exception as err:  # TFDS raises assorted types for a damaged folder (JSON, proto, missing files)
        raise ShardFormatError(f"{folder}: TFDS cannot open it ({type(err).__name__}: {_one_line(err)})") from None
    if len(info.splits) != 1:
        raise ShardFormatError(
            f"{folder}: holds the splits {sorted(info.splits)}; rpo-jax reads a folder of one split (give each "
            "split a folder of its own: its files, and metadata written for that split)"
        )
    split = next(iter(info.splits.values()))
    if info.file_format is None or info.file_format.value != "array_record":
        raise ShardFormatError(f"{folder}/dataset_info.json: files are {info.file_format}; rpo-jax reads array_record")
    shards, start = [], 0
    for path, count in zip(split.filepaths, split.shard_lengths, strict=True):
        shards.append({"path": Path(path).name, "num_records": int(count), "first_example_index": start})
        start += int(count)
    missing = [shard["path"] for shard in shards if not (folder / shard["path"]).is_file()]
    if missing:
        raise ShardFormatError(f"{folder}/dataset_info.json lists shard files that are missing: {missing}")
    group_size = _checked_group_size(folder, info.features)
    manifest = {
        **_checked_facts(folder, dict(info.metadata or {})),
        "source": {"tfds_folder": str(folder)},
        "tfds": {"name": info.name, "split": split.name},
        "row_lengths": None,  # no row_lengths.npy: `read_row_lengths` reads the records
        "shards": shards,
    }
    stats = scan_records(folder, manifest, group_size)
    manifest.update(stats.manifest_fields(manifest["max_length"]))
    manifest["fingerprint"] = _folder_fingerprint(folder, shards)
    return manifest


def scan_records(folder: str | Path, manifest: dict, group_size: int) -> ShardStats:
    """Reads every record once, in order, checking its group size."""
    records, stats = ShardRecords(folder, manifest), ShardStats()
    for index in range(len(records)):
        record = records[index]
        if len(record["rows"]) != group_size:
            found = len(record["rows"])
            raise ShardFormatError(f"{records.locate(index)}: {found} rows, the features say {group_size}")
        stats.add(record["rows"], record["response_starts"])
    return stats


def _checked_group_size(folder: Path, features) -> int:
    if features is None:
        raise ShardFormatError(f"{folder}: no features.json; tfds.folder_dataset.write_metadata writes it")
    row_lengths = features["row_lengths"] if "row_lengths" in features.keys() else None
    shape = getattr(row_lengths, "shape", None)
    # G is whatever row_lengths says; without a fixed (G,) shape the features are compared against G = 2
    group_size = shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else 2
    expected = pair_features(group_size)
    problems = []
    for name in FEATURE_NAMES:
        if name not in features.keys():
            problems.append(f"{name} missing")
            continue
        found, wanted = features[name], expected[name]
        for info in ("get_tensor_info", "get_serialized_info"):
            if getattr(found, info)() != getattr(wanted, info)():
                problems.append(f"{name} is {getattr(found, info)()}, expected {getattr(wanted, info)()}")
                break
    if problems:
        raise ShardFormatError(f"{folder}/features.json: features differ from rpo-jax's: {'; '.join(problems)}")
    return group_size


def _checked_facts(folder: Path, metadata: dict) -> dict:
    facts = metadata.get(METADATA_KEY)
    wrong = []
    for path, kinds in _REQUIRED_FACTS.items():
        value = facts
        for key in path:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if isinstance(value, bool) or not isinstance(value, kinds):  # bool is an int to isinstance
            wrong.append(".".join((METADATA_KEY, *path)))
    if wrong:
        raise ShardFormatError(
            f"{folder}/metadata.json: {', '.join(wrong)} missing or mistyped; a TFDS folder made without `rpo-jax "
            f"tokenize` needs the tokenizer facts there: tfds.folder_dataset.write_metadata(..., "
            f"metadata=tfds.core.MetadataDict({METADATA_KEY}={{...}})) (see data_pipeline/README.md)"
        )
    return {field: facts[field] for field in FACT_FIELDS}


def _folder_fingerprint(folder: Path, shards: list[dict]) -> str:
    names = [name for name in TFDS_METADATA_FILES if (folder / name).is_file()] + [s["path"] for s in shards]
    return hashlib.sha256(json.dumps({n: file_sha256(folder / n) for n in names}, sort_keys=True).encode()).hexdigest()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
