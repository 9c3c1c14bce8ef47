"""Preference pairs: the pair schema, input readers, recipes and the `build-pairs` command.

`schema` (PairRecord and friends), `readers` (instructions, responses, pair files), the pool recipes (`pool`,
`pool_builder`, `rpo`, `iopo`, `dpo`), `imports` (TRL / sharegpt / hh-rlhf / IOPO files), `stats`, `build` (one
build from `BuildSettings`) and `cli`. May import `data_pipeline.constraints`, `files` and `errors`; never
`records` or anything that needs JAX.
"""
