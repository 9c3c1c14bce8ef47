"""One tokenized example as a `tf.train.Example` record, as TFDS encodes it, and random access to a folder's records.

Features (`pair_features(G)`, TFDS feature connectors; `features.json` beside the shards records them, so
`tfds.builder_from_directory(dir).as_data_source(split="train")` decodes every field without TensorFlow):

  tokens           int32 [T]  the G rows' token ids back to back (row g starts at sum(row_lengths[:g]))
  row_lengths      int32 [G]  tokens per row
  response_starts  int32 [G]  where each row's scored span (the final assistant turn) begins
  margin           int32      g, the number of constraints the pair differs in (0 for imports)
  example_index    int64      the record's global index (shards concatenated in order)
  recipe           text       dpo | rpo | iopo

Rows are one flat `tokens` feature rather than a ragged `Sequence` so that a record decodes with a handful of
array copies. Records are written by TFDS's own serializer (`FeaturesDict.serialize_example`: every integer an
int64 list) and read here straight from the protobuf messages (`example_proto`, declared without importing
tensorflow_datasets), 3-4 times faster than TFDS's generic `deserialize_example_np` (numbers in
`data_pipeline/README.md`). tensorflow_datasets is imported only where a folder's metadata is written or read (it
costs ~0.5 s to import; `rpo-jax tokenize --help` and Grain's workers must not pay that).
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from data_pipeline.errors import UserError
from data_pipeline.records.example_proto import Example
from data_pipeline.records.tokenize import TokenizedExample

FEATURE_NAMES = ("tokens", "row_lengths", "response_starts", "margin", "example_index", "recipe")


class ShardFormatError(UserError, ValueError):
    """A shard folder or record that does not match this schema version."""


def pair_features(group_size: int):
    """The records' `tfds.features.FeaturesDict` for groups of `group_size` sequences."""
    import tensorflow_datasets as tfds

    tensor, scalar = tfds.features.Tensor, tfds.features.Scalar
    return tfds.features.FeaturesDict(
        {
            "tokens": tensor(shape=(None,), dtype=np.int32, doc="the rows' token ids back to back"),
            "row_lengths": tensor(shape=(group_size,), dtype=np.int32, doc="tokens per row"),
            "response_starts": tensor(
                shape=(group_size,), dtype=np.int32, doc="index in its row of each row's first scored token"
            ),
            "margin": scalar(dtype=np.int32, doc="g: number of constraints the pair differs in (0 for imports)"),
            "example_index": scalar(dtype=np.int64, doc="the record's global index, shards concatenated"),
            "recipe": tfds.features.Text(doc="dpo, rpo or iopo"),
        }
    )


def example_features(example_index: int, example: TokenizedExample) -> dict:
    """The feature values of one example (what `pair_features(G).serialize_example` takes)."""
    return {
        "tokens": np.concatenate(example.rows).astype(np.int32, copy=False),
        "row_lengths": np.asarray([len(row) for row in example.rows], dtype=np.int32),
        "response_starts": np.asarray(example.response_starts, dtype=np.int32),
        "margin": example.margin,
        "example_index": example_index,
        "recipe": example.recipe,
    }


def decode_features(feature) -> dict:
    """A parsed record's feature map (`tf.train.Example.features.feature`) -> {'rows': G int32 arrays,
    'response_starts': int32[G], 'margin', 'example_index', 'recipe'}."""
    # G is small: Python lists beat numpy calls here (decode speed is the loader's budget, README numbers).
    lengths, starts = list(feature["row_lengths"].int64_list.value), list(feature["response_starts"].int64_list.value)
    margin, example_index = feature["margin"].int64_list.value, feature["example_index"].int64_list.value
    recipe = feature["recipe"].bytes_list.value
    tokens = np.array(feature["tokens"].int64_list.value, dtype=np.int32)
    if not (lengths and len(margin) == len(example_index) == len(recipe) == 1):
        # indexing a missing key added an empty one to this throwaway message; name the ones the record lacks
        missing = [name for name in FEATURE_NAMES if not _has_values(feature[name])]
        raise ShardFormatError(f"a tf.train.Example without one value of each feature (empty: {missing})")
    if len(starts) != len(lengths) or tokens.size != sum(lengths):
        raise ShardFormatError(
            f"{tokens.size} tokens, {len(lengths)} row lengths summing to {sum(lengths)}, {len(starts)} starts"
        )
    if not all(0 <= start <= length for start, length in zip(starts, lengths)):
        raise ShardFormatError(f"response_starts {starts} outside rows of {lengths} tokens")
    rows, offset = [], 0
    for length in lengths:
        rows.append(tokens[offset : offset + length])
        offset += length
    return {
        "rows": rows,
        "response_starts": np.array(starts, dtype=np.int32),
        "margin": int(margin[0]),
        "example_index": int(example_index[0]),
        "recipe": recipe[0].decode("utf-8"),
    }


def _has_values(feature) -> bool:
    return bool(feature.int64_list.value or feature.bytes_list.value or feature.float_list.value)


class ShardRecords:
    """A shard folder's decoded records by example index (= global record index). Errors name the shard file and
    the record in it. Picklable: runs inside Grain worker processes."""

    def __init__(self, shard_dir: str | Path, manifest: dict):
        import grain

        self.paths = [str(Path(shard_dir) / shard["path"]) for shard in manifest["shards"]]
        self.first_indices = [int(shard["first_example_index"]) for shard in manifest["shards"]]
        try:
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        except RuntimeError as err:  # array_record's message does not say which file
            path, reason = _first_unreadable(self.paths) or ("one of " + ", ".join(self.paths), str(err))
            raise ShardFormatError(f"{path}: not a readable ArrayRecord file ({reason})") from None
        listed = sum(int(shard["num_records"]) for shard in manifest["shards"])
        if len(self._source) != listed:
            held = len(self._source)
            raise ShardFormatError(f"{shard_dir}: the shard files hold {held} records, its metadata lists {listed}")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        try:
            record = decode_features(Example.FromString(self._source[index]).features.feature)
        except DecodeError as err:
            raise ShardFormatError(f"{self.locate(index)}: not a tf.train.Example ({err})") from None
        except (ShardFormatError, RuntimeError) as err:
            raise ShardFormatError(f"{self.locate(index)}: {' '.join(str(err).split())}") from None
        if record["example_index"] != index:
            raise ShardFormatError(
                f"{self.locate(index)}: example_index {record['example_index']} (records must be stored in "
                "example-index order)"
            )
        return record

    def locate(self, index: int) -> str:
        """'<shard file>: record <i in it> (example <index>)' for messages."""
        shard = bisect_right(self.first_indices, index) - 1
        return f"{self.paths[shard]}: record {index - self.first_indices[shard]} (example {index})"


def _first_unreadable(paths: list[str]) -> tuple[str, str] | None:
    from array_record.python.array_record_module import ArrayRecordReader

    for path in paths:
        try:
            ArrayRecordReader(path).close()
        except (RuntimeError, OSError) as err:
            return path, " ".join(str(err).split())
    return None
