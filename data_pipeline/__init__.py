"""Offline data pipeline: raw instructions and responses -> tokenized pair shards. No JAX, and nothing from
the training library.

Three wings; imports only point down this list (a test checks it):

- `records/`     pairs -> tokenized ArrayRecord shards + manifest, and the Grain loader that reads them back as
                 `[B, G, L]` batches. The only wing the training library reads data through.
- `pairs/`       the pair schema, input readers, the RPO / IOPO / DPO recipes and `build-pairs`.
- `constraints/` verifiable constraints: checkers, parameter schemas, the reversal table, the LLM judge and
                 IFEval / IFBench scoring.

Two base modules every wing may use: `files` (the local-path rule for settings and flags, hashing, atomic
writes) and `errors` (the user-error type the CLI prints as one line).
"""
