"""Tokenized pairs: tokenization, truncation, ArrayRecord shards + manifest, and the Grain loader.

`tokenize` and `truncation` (a PairRecord -> token rows), `pair_example` (the record: a `tf.train.Example` as
TFDS encodes it, and reading a folder's records), `shards` (writer, manifest), `shard_stats` (the manifest's row
statistics), `tfds_folder` (TFDS metadata; TFDS folders made elsewhere), `build` (a pair file -> a shard folder),
`prepare` (build only when missing or stale), `loader` (`[B, G, L]` numpy batches) and `cli` (`rpo-jax tokenize`).
May import `data_pipeline.pairs` (the schema and readers), `files` and `errors`. This wing is the training library's
only way in: it imports `loader`, `shards` (the manifest), `prepare` and `truncation` from here and nothing else
from data_pipeline but `files`/`errors`.
"""
